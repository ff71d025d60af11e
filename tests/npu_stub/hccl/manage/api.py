"""Stand-in for hccl.manage.api (re-exported by npu_bridge.npu_init): rank queries of the world group.

Like HCCL they need collective communication to be initialised (npu_ops.initialize_system run in a session) and read
the job from the environment the ModelZoo scripts set: RANK_TABLE_FILE (rank count), RANK_ID (this rank), and the
server of this rank in the table (local rank and local size).
"""
import json
import os

from npu_bridge.hccl import loopback


def _table_ranks():
    with open(os.environ["RANK_TABLE_FILE"]) as handle:
        table = json.load(handle)
    servers = []
    for server in table["server_list"]:
        servers.append([int(device["rank_id"]) for device in server["device"]])
    return servers


def _my_server():
    me = int(os.environ["RANK_ID"])
    for ranks in _table_ranks():
        if me in ranks:
            return sorted(ranks)
    raise RuntimeError("RANK_ID {} is not in RANK_TABLE_FILE".format(me))


def get_rank_size(group="hccl_world_group"):
    loopback.require_initialized("get_rank_size")
    return sum(len(ranks) for ranks in _table_ranks())


def get_rank_id(group="hccl_world_group"):
    loopback.require_initialized("get_rank_id")
    return int(os.environ["RANK_ID"])


def get_local_rank_size(group="hccl_world_group"):
    loopback.require_initialized("get_local_rank_size")
    return len(_my_server())


def get_local_rank_id(group="hccl_world_group"):
    loopback.require_initialized("get_local_rank_id")
    return _my_server().index(int(os.environ["RANK_ID"]))

"""Who am I: TF_CONFIG and Ascend rank tables parsed into rank/size/chief, and one-line errors for everything a
user can get wrong, before any TensorFlow work."""
import json
import socket

import pytest

from unet_perf import cluster
from unet_perf.errors import UserError

TWO = ["127.0.0.1:2222", "127.0.0.1:2223"]


def tf_config(workers=TWO, kind="worker", index=0, chief=None):
    jobs = {"worker": workers}
    if chief is not None:
        jobs["chief"] = chief
    return json.dumps({"cluster": jobs, "task": {"type": kind, "index": index}})


@pytest.mark.parametrize("kind, index, chief, rank, size", [
    ("worker", 0, None, 0, 2),
    ("worker", 1, None, 1, 2),
    ("chief", 0, ["127.0.0.1:2300"], 0, 3),   # a listed chief is rank 0, the workers follow
    ("worker", 0, ["127.0.0.1:2300"], 1, 3),
])
def test_tf_config_ranks(kind, index, chief, rank, size):
    found = cluster.from_tf_config(tf_config(kind=kind, index=index, chief=chief))
    assert (found.rank, found.size, found.chief) == (rank, size, rank == 0)
    assert found.addresses[rank] == (chief + TWO if chief else TWO)[rank]


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON"),
    (json.dumps({"cluster": {"worker": TWO}}), "\"task\" object"),
    (tf_config(index=2), "task.index 2 is out of range"),
    (tf_config(index=-1), "out of range"),
    (tf_config(kind="ps"), "task.type"),
    (json.dumps({"cluster": {"worker": TWO, "ps": ["h:1"]}, "task": {"type": "worker", "index": 0}}), "ps"),
    (tf_config(workers=["127.0.0.1"]), "not \"host:port\""),
    (tf_config(workers=["127.0.0.1:99999"]), "port in 1..65535"),
    (tf_config(workers=[TWO[0], TWO[0]]), "address twice"),
    (tf_config(workers=[]), "no workers"),
    (tf_config(chief=["a:1", "b:2"]), "at most one"),
])
def test_malformed_tf_config_is_one_line(text, fragment):
    with pytest.raises(UserError) as info:
        cluster.from_tf_config(text)
    message = str(info.value)
    assert fragment in message and "\n" not in message and "TF_CONFIG" in message


def test_environment_without_cluster_is_one_worker():
    found = cluster.from_environment({})
    assert (found.rank, found.size, found.distributed) == (0, 1, False)
    assert cluster.from_environment({"RANK_TABLE_FILE": "/nowhere", "RANK_SIZE": "1"}).size == 1


def _rank_table(path, servers):
    table = {"version": "1.0", "server_count": str(len(servers)), "status": "completed", "server_list": [
        {"server_id": server, "device": [{"device_id": str(d), "device_ip": "192.168.100.{}".format(d),
                                          "rank_id": str(rank)} for d, rank in ranks]}
        for server, ranks in servers]}
    path.write_text(json.dumps(table))
    return str(path)


def test_rank_table_two_servers(tmp_path):
    path = _rank_table(tmp_path / "rank_table.json", [("10.0.0.1", [(0, 0), (1, 1)]), ("10.0.0.2", [(0, 2), (1, 3)])])
    found = cluster.from_environment({"RANK_TABLE_FILE": path, "RANK_ID": "2", "RANK_SIZE": "4"})
    assert (found.rank, found.size, found.source) == (2, 4, "RANK_TABLE_FILE")
    assert found.addresses == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"]


@pytest.mark.parametrize("rank_id, rank_size, fragment", [
    ("0", "8", "RANK_SIZE=8 disagrees"),
    ("2", "2", "RANK_ID=2 is out of range"),
    ("x", "2", "must be an integer"),
])
def test_rank_table_errors(tmp_path, rank_id, rank_size, fragment):
    path = _rank_table(tmp_path / "rank_table.json", [("10.0.0.1", [(0, 0), (1, 1)])])
    with pytest.raises(UserError) as info:
        cluster.from_rank_table(path, rank_id, rank_size)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_rank_table_unreadable(tmp_path):
    with pytest.raises(UserError, match="cannot be read"):
        cluster.from_rank_table(str(tmp_path / "missing.json"), "0", "2")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        cluster.from_rank_table(str(tmp_path / "bad.json"), "0", "2")


def _listening_socket():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    return listener


def test_port_in_use_is_refused_before_starting():
    listener = _listening_socket()
    try:
        address = "127.0.0.1:{}".format(listener.getsockname()[1])
        me = cluster.Cluster(0, 2, [address, "127.0.0.1:1"], "TF_CONFIG")
        with pytest.raises(UserError, match="port {} of worker 0 .* is in use".format(listener.getsockname()[1])):
            cluster.check_port_free(me)
    finally:
        listener.close()


def test_startup_wait_is_bounded_and_names_the_absent_worker():
    listener = _listening_socket()  # worker 1 is up, worker 2 never starts
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    absent = "127.0.0.1:{}".format(closed.getsockname()[1])
    closed.close()
    try:
        up = "127.0.0.1:{}".format(listener.getsockname()[1])
        me = cluster.Cluster(0, 3, ["127.0.0.1:1", up, absent], "TF_CONFIG")
        with pytest.raises(UserError) as info:
            cluster.wait_for_peers(me, timeout_sec=0.5, poll_sec=0.1)
    finally:
        listener.close()
    message = str(info.value)
    assert "worker 2 ({}) did not start".format(absent) in message and "worker 1" not in message.split(":", 1)[1]

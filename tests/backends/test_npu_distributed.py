"""The NPU backend on two ranks through HCCL, against the stand-in npu_bridge (tests/npu_stub), whose hccl_ops run
TensorFlow collective ops between two processes on 127.0.0.1.

What runs for real here: NPUDistributedOptimizer's gradient all-reduce inside the step, the stand-in device loop
executing the graph K times per Session.run (sink mode), NPULossScaleOptimizer(is_distributed=True) summing the
float status over the ranks, the broadcast of rank 0's variables, initialize_system before the rank queries.
One pair of rank processes (this file run as a script, see `worker_main`) does every scenario and writes an .npz per
scenario and rank; rank 0 also trains the one-rank reference. The in-process tests at the end need no peers.
"""
import json
import os
import sys

import numpy as np
import pytest

from unet_perf.compat import npu_bridge_available

from support import (NPU_BRIDGE_API, NPU_STUB, REPO, assert_one_skip_everywhere, assert_rank_0_weights_everywhere,
                     forget_stand_in, free_addresses, made_up_device_ip, poisoned_source, rank_python_path,
                     run_rank_processes, save_single_reference, train_rank, weights_of, write_rank_table)

# Seconds for the whole pair: a hang fails instead of blocking CI. About 1-2 minutes here; the margin is for a
# 2-core machine shared with other jobs.
HARD_TIMEOUT = 600
BATCH = 1  # per rank; the reference trains one rank with 2 x BATCH
K = 4  # iterations_per_loop: the stand-in device runs the graph K times per Session.run
RUNS = 2
TINY = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "6", "--synthetic_size",
        "64", "--xla_augment", "off", "--dropout", "0.5", "--precision", "fp32", "--summary_images", "0",
        "--deterministic", "true", "--precision_mode", "allow_mix_precision", "--loss_scale", "dynamic",
        "--loss_scale_init", "1024", "--iterations_per_loop", str(K)]

pytestmark = pytest.mark.skipif(npu_bridge_available(), reason="a real npu_bridge is installed; this uses the stand-in")


def rank_env(addresses, rank, table_path):
    env = dict(os.environ, RANK_TABLE_FILE=table_path, RANK_ID=str(rank), RANK_SIZE=str(len(addresses)),
               ASCEND_DEVICE_ID=str(rank), JOB_ID="unet-perf-test", NPU_STUB_HCCL_ADDRESSES=",".join(addresses),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=rank_python_path(NPU_STUB))
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run the rank pair once; {(scenario, rank): npz dict}."""
    out_dir = str(tmp_path_factory.mktemp("npu_distributed"))
    table = write_rank_table(os.path.join(out_dir, "rank_table.json"), 2)
    addresses = free_addresses(2)
    envs = [rank_env(addresses, rank, table) for rank in range(2)]
    return run_rank_processes(os.path.abspath(__file__), out_dir, envs, HARD_TIMEOUT)


def test_two_ranks_equal_one_rank_with_the_global_batch_in_sink_mode(results):
    single = weights_of(results[("equivalence", "single")])
    start = weights_of(results[("equivalence", "single_initial")])
    for rank in ("0", "1"):
        data = results[("equivalence", rank)]
        assert int(data["global_step"]) == K * RUNS  # the device loop ran K steps per Session.run
        distributed = weights_of(data)
        assert sorted(distributed) == sorted(single)
        for name in single:
            np.testing.assert_allclose(distributed[name], single[name], rtol=1e-5, atol=1e-7, err_msg=name)
        # the reported loss is the global batch's, the same on both ranks and equal to the one-rank loss
        np.testing.assert_allclose(data["mean_loss"], results[("equivalence", "single")]["mean_loss"], rtol=1e-5)
    moved = max(float(np.max(np.abs(single[name] - start[name]))) for name in single)
    assert moved > 1e-3  # training moved the weights well beyond the tolerance


def test_ranks_seeded_differently_hold_rank_0s_weights(results):
    assert_rank_0_weights_everywhere(results, "overflow")


def test_an_overflow_on_one_rank_skips_the_step_on_every_rank(results):
    assert_one_skip_everywhere(results[("overflow", "0")], results[("overflow", "1")])


def test_without_the_status_all_reduce_the_ranks_would_diverge(results):
    """Negative control: the stand-in's interconnect saturates like Ascend 910, so rank 0 sees rank 1's overflow
    only through is_distributed's status all-reduce; with it ignored, rank 0 applies the step and the ranks part."""
    chief, other = results[("overflow_control", "0")], results[("overflow_control", "1")]
    assert int(other["skipped_steps"]) >= 1 and int(chief["skipped_steps"]) < int(other["skipped_steps"])
    weights_chief, weights_other = weights_of(chief), weights_of(other)
    assert any(not np.array_equal(weights_chief[name], weights_other[name]) for name in weights_chief)


def test_the_wiring_uses_the_adapter_names(results):
    for rank in ("0", "1"):
        calls = json.loads(str(results[("calls", rank)]["calls"]))
        assert calls["NPUDistributedOptimizer"] == 3  # one per two-rank graph; never for the one-rank reference
        # rank 0 also built the one-rank reference, without is_distributed
        assert calls["is_distributed"] == ([False, True] if rank == "0" else [True])
        assert calls["initialize_system_before_rank_query"]
        assert calls["broadcast_roots"] == [0]
        assert calls["hcom_parallel"] and calls["set_iteration_per_loop"] == [K]


def test_the_start_up_session_carries_the_training_precision_mode(results):
    """GE takes precision_mode from the process's first NPU session, HCCL's initialize_system session."""
    for rank in ("0", "1"):
        options = json.loads(str(results[("calls", rank)]["calls"]))["ge_startup_options"]
        assert options["precision_mode"] == "allow_mix_precision"


def test_start_up_agreement_in_int32_words_is_exact(results):
    for rank in ("0", "1"):
        data = results[("handshake", rank)]
        assert data["max"].tolist() == [2.0 ** 52 - 1, -(2.0 ** 33) - 5, 8.0]
        assert data["min"].tolist() == [2.0 ** 52 - 2, -(2.0 ** 33) - 7, -1.0]
        assert int(data["chief_step"]) == 8  # rank 0's start step reaches every rank
        assert "do not all run the same configuration" in str(data["refusal"])


# --- the rank side (this file run as a script) -------------------------------------------------------------------

def worker_main(out_dir):
    from npu_bridge import stub_log
    from npu_bridge.estimator.npu import npu_loss_scale_optimizer

    from unet_perf import cluster as cluster_lib
    from unet_perf import compat
    from unet_perf.backends.hccl import NpuCollectives
    from unet_perf.backends.npu import NpuBackend
    from unet_perf.config import config_from_args

    compat.enable_graph_mode()
    cluster = cluster_lib.from_environment()
    assert cluster.source == "RANK_TABLE_FILE" and cluster.size == 2
    collectives = NpuCollectives(cluster, timeout_sec=120)
    rank = cluster.rank

    def save(name, data):
        np.savez(os.path.join(out_dir, "{}_rank{}.npz".format(name, rank)), **data)

    flags = TINY + ["--optimizer", "momentum", "--learning_rate", "0.01", "--max_steps", str(K * RUNS)]
    cfg = config_from_args(flags + ["--batch_size", str(BATCH)])
    # initialize_system in its own session with the training session config, then HCCL's rank and size are checked
    assert NpuBackend(collectives=collectives, cfg=cfg).session_target() == ""
    save("handshake", _handshake(cfg, collectives, rank))
    save("equivalence", _train(cfg, NpuBackend(collectives=collectives), _share_source(cfg, rank, 2), 2))
    if rank == 0:
        single_cfg = config_from_args(flags + ["--batch_size", str(2 * BATCH)])
        os.environ["RANK_SIZE"] = "1"  # one device: the adapter's optimizers read RANK_SIZE themselves
        try:
            data = _train(single_cfg, NpuBackend(), _share_source(single_cfg, 0, 1), 1, keep_initial=True)
        finally:
            os.environ["RANK_SIZE"] = "2"
        save_single_reference(out_dir, "equivalence", data)

    # Seeds differ per rank (so do the initial weights until rank 0's are broadcast), and rank 1's images are
    # non-finite in the second step of the first K-step run.
    cfg = config_from_args(TINY + ["--seed", str(7 + rank), "--batch_size", "1", "--max_steps", str(K * RUNS)])
    poisoned = poisoned_source(cfg, poisoned=(rank == 1), bad_batch=1)
    save("overflow", _train(cfg, NpuBackend(collectives=collectives), poisoned, 2, keep_initial=True, inspect=True))
    npu_loss_scale_optimizer.REDUCES_STATUS = False
    try:
        save("overflow_control", _train(cfg, NpuBackend(collectives=collectives), poisoned, 2))
    finally:
        npu_loss_scale_optimizer.REDUCES_STATUS = True

    save("calls", {"calls": json.dumps(_summarise_calls(stub_log))})


def _handshake(cfg, collectives, rank):
    """Start-up agreement over HCCL, whose stand-in refuses 64-bit all-reduces like adapters before 2026: exact
    maxima/minima of float64 values beyond int32 (same and different high words), Team.handshake's chief step, and
    its refusal of differing configs."""
    import dataclasses

    from unet_perf.training.team import Team
    from unet_perf.backends.npu import NpuBackend
    from unet_perf.compat import v1
    from unet_perf.errors import UserError

    team = Team(collectives.cluster, NpuBackend(collectives=collectives))
    mine = [[2.0 ** 52 - 1, -(2.0 ** 33) - 5, 8.0], [2.0 ** 52 - 2, -(2.0 ** 33) - 7, -1.0]][rank]
    graph = v1.Graph()
    with graph.as_default():
        values = v1.constant(mine, v1.float64)
        reduced = [collectives.all_reduce(values, merge_op=op, final_op="Id") for op in ("Max", "Min")]
    with v1.Session(graph=graph, config=collectives.configure(v1.ConfigProto())) as sess:
        maximum, minimum = sess.run(reduced)
    pairs = _Pairs(np.zeros((2, 4, 4), np.float32), np.ones((2, 4, 4), np.float32))
    chief_step = team.handshake(cfg, pairs, 8 if rank == 0 else 0)
    try:
        team.handshake(dataclasses.replace(cfg, seed=cfg.seed + rank), pairs, 0)
        refusal = ""
    except UserError as err:
        refusal = str(err)
    return {"max": maximum, "min": minimum, "chief_step": chief_step, "refusal": refusal}


class _Pairs(object):
    def __init__(self, images, masks):
        self.images, self.masks = images, masks


def _summarise_calls(stub_log):
    from npu_bridge import ge_plugin
    names = [name for name, _ in stub_log.CALLS]
    first_init = names.index("npu_ops.initialize_system")
    config = stub_log.calls_named("session_config")
    return {
        "NPUDistributedOptimizer": names.count("NPUDistributedOptimizer"),
        "is_distributed": sorted(set(call["is_distributed"] for call in stub_log.calls_named("NPULossScaleOptimizer"))),
        "initialize_system_before_rank_query": first_init < names.index("training"),
        "broadcast_roots": sorted(set(call["root_rank"] for call in stub_log.calls_named("hccl_ops.broadcast"))),
        "hcom_parallel": all(call["hcom_parallel"] for call in config) and bool(config),
        "set_iteration_per_loop": sorted(set(call["iterations_per_loop"]
                                             for call in stub_log.calls_named("set_iteration_per_loop"))),
        "ge_startup_options": ge_plugin.effective(),
    }


def _share_source(cfg, rank, size, batches=3):
    """This rank's rows of `batches` fixed global batches of size x cfg.batch_size, repeated: what the pipeline's
    per-worker share gives, without building the augmentation graph."""
    import tensorflow as tf

    global_batch = size * cfg.batch_size
    rng = np.random.RandomState(11)
    shape = [batches, global_batch, cfg.crop_size, cfg.crop_size, 1]
    images = rng.uniform(0, 1, shape).astype(np.float32)
    masks = (rng.uniform(0, 1, shape) > 0.3).astype(np.float32)
    rows = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)

    def source():
        return tf.data.Dataset.from_tensor_slices((images[:, rows], masks[:, rows])).repeat()
    return source


def _train(cfg, backend, source, size, keep_initial=False, inspect=False):
    """support.train_rank of RUNS Session.runs; the call log marks where the training session starts and, on
    several ranks, whether its config has hcom_parallel."""
    from npu_bridge.stub_log import record

    def mark_training_session():
        if size > 1:
            params = backend.session_config(cfg).graph_options.rewrite_options.custom_optimizers[0].parameter_map
            record("session_config", hcom_parallel=params["hcom_parallel"].b)
        record("training")

    return train_rank(cfg, backend, source, size, RUNS, keep_initial=keep_initial, inspect=inspect,
                      before_session=mark_training_session)


if __name__ == "__main__":
    worker_main(sys.argv[1])


# --- in-process: the environment checks and the rank table (no peers needed) ----------------------------------

def _two_server_table(path):
    table = {"server_count": "2", "server_list": [
        {"server_id": "10.0.0.{}".format(server), "device": [
            {"device_id": str(device), "device_ip": "192.168.100.10{}".format(device),
             "rank_id": str(server * 2 + device)} for device in range(2)]} for server in range(2)],
        "status": "completed", "version": "1.0"}
    path.write_text(json.dumps(table))
    return str(path)


def test_ranks_are_global_and_devices_local_on_several_servers(tmp_path):
    from unet_perf import rank_table
    table = _two_server_table(tmp_path / "table.json")
    assert rank_table.server_ranks(table, 4, server_index=1) == [(2, 0), (3, 1)]
    assert rank_table.device_of_rank(table, 3) == ("10.0.0.1", 1)
    with pytest.raises(Exception, match="server_index 2 is out of range"):
        rank_table.server_ranks(table, 4, server_index=2)


def test_environment_errors_are_one_line_and_name_the_variable(tmp_path):
    from unet_perf import cluster as cluster_lib
    from unet_perf.backends.hccl import NpuCollectives
    from unet_perf.errors import UserError

    table = _two_server_table(tmp_path / "table.json")
    cluster = cluster_lib.from_rank_table(table, 3, 4)
    env = {"RANK_TABLE_FILE": table, "ASCEND_DEVICE_ID": "1", "JOB_ID": "job"}
    assert NpuCollectives(cluster, 60, env=env).device_id == 1
    for change, needle in [({"JOB_ID": ""}, "JOB_ID"), ({"ASCEND_DEVICE_ID": "0"}, "RANK_ID=3 is device 1"),
                           ({"ASCEND_DEVICE_ID": ""}, "ASCEND_DEVICE_ID")]:
        with pytest.raises(UserError) as info:
            NpuCollectives(cluster, 60, env=dict(env, **change))
        assert needle in str(info.value) and "\n" not in str(info.value)
    # DEVICE_ID is the fallback the ModelZoo scripts also export
    assert NpuCollectives(cluster, 60, env=dict(env, ASCEND_DEVICE_ID="", DEVICE_ID="1")).device_id == 1


def test_the_rank_table_is_checked_against_the_physical_device(tmp_path):
    """ASCEND_DEVICE_ID is logical; the table's device_id is physical: DEVICE_ID when set, else ASCEND_DEVICE_ID
    through ASCEND_RT_VISIBLE_DEVICES."""
    from unet_perf import cluster as cluster_lib
    from unet_perf.backends.hccl import NpuCollectives
    from unet_perf.errors import UserError

    table = tmp_path / "table.json"
    table.write_text(json.dumps({"server_count": "1", "status": "completed", "version": "1.0", "server_list": [
        {"server_id": "10.0.0.1", "device": [{"device_id": str(4 + rank), "device_ip": made_up_device_ip(4 + rank),
                                              "rank_id": str(rank)} for rank in range(2)]}]}))
    cluster = cluster_lib.from_rank_table(str(table), 1, 2)
    env = {"RANK_TABLE_FILE": str(table), "JOB_ID": "job"}
    # devices 4 and 5 of the server seen as logical 0 and 1 (e.g. ASCEND_RT_VISIBLE_DEVICES=4,5)
    collectives = NpuCollectives(cluster, 60, env=dict(env, ASCEND_DEVICE_ID="1", DEVICE_ID="5"))
    assert collectives.device_id == 1  # the logical id the process uses
    assert NpuCollectives(cluster, 60, env=dict(env, ASCEND_DEVICE_ID="1",
                                                ASCEND_RT_VISIBLE_DEVICES="4,5")).device_id == 1
    assert NpuCollectives(cluster, 60, env=dict(env, ASCEND_DEVICE_ID="5")).device_id == 5  # logical = physical
    for wrong, needle in [(dict(ASCEND_DEVICE_ID="1", DEVICE_ID="4"), "physical device 4 (DEVICE_ID)"),
                          (dict(ASCEND_DEVICE_ID="0", ASCEND_RT_VISIBLE_DEVICES="4,5"), "physical device 4"),
                          (dict(ASCEND_DEVICE_ID="2", ASCEND_RT_VISIBLE_DEVICES="4,5"), "ASCEND_RT_VISIBLE_DEVICES")]:
        with pytest.raises(UserError) as info:
            NpuCollectives(cluster, 60, env=dict(env, **wrong))
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_generated_rank_tables_read_hccn_tool_then_hccn_conf_and_never_guess(tmp_path, monkeypatch):
    from unet_perf import rank_table
    from unet_perf.errors import UserError

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no hccn_tool on PATH
    monkeypatch.setattr(rank_table, "DRIVER_TOOLS", str(tmp_path / "driver_tools"))  # nor in the driver folder
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.1.199\nnetmask_0=255.255.255.0\naddress_1=192.168.2.199\n")
    table = rank_table.generate(2, hccn_conf=str(conf))
    assert [device["device_ip"] for device in table["server_list"][0]["device"]] == ["192.168.1.199",
                                                                                      "192.168.2.199"]
    with pytest.raises(UserError) as info:  # device 2 has no address anywhere: refused, not guessed
        rank_table.generate(3, hccn_conf=str(conf))
    message = str(info.value)
    assert "device(s) 2" in message and "--rank_table" in message and "\n" not in message
    assert rank_table.main(["generate", "--devices", "2", "--output", str(tmp_path / "t.json"),
                            "--hccn_conf", str(tmp_path / "missing.conf")]) == 2
    assert not (tmp_path / "t.json").exists()
    # hccn_tool, when present (here in the driver's tools folder, not on PATH), comes first
    tools = tmp_path / "driver_tools"
    tools.mkdir()
    tool = tools / "hccn_tool"
    tool.write_text("#!/bin/sh\necho \"ipaddr:10.9.0.$2\"\n")
    tool.chmod(0o755)
    table = rank_table.generate(3, hccn_conf=str(conf))
    assert [device["device_ip"] for device in table["server_list"][0]["device"]] == ["10.9.0.0", "10.9.0.1",
                                                                                      "10.9.0.2"]


def test_collectives_config_adds_hcom_parallel_and_the_timeouts(tmp_path):
    from unet_perf import cluster as cluster_lib
    from unet_perf.backends.hccl import NpuCollectives
    from unet_perf.compat import v1

    table = write_rank_table(str(tmp_path / "table.json"), 2)
    collectives = NpuCollectives(cluster_lib.from_rank_table(table, 0, 2), 30,
                                 env={"RANK_TABLE_FILE": table, "DEVICE_ID": "0", "JOB_ID": "job"})
    config = collectives.configure(v1.ConfigProto())
    (custom_op,) = config.graph_options.rewrite_options.custom_optimizers
    assert custom_op.name == "NpuOptimizer" and custom_op.parameter_map["hcom_parallel"].b
    # HCCL keeps its own timeout; the session's deadline is the first-run bound (test_distributed_faults.py)
    assert "hccl_timeout" not in custom_op.parameter_map
    assert config.operation_timeout_in_ms >= 30000


@pytest.mark.skipif(not os.path.exists(NPU_BRIDGE_API), reason="../shared/compat/npu_bridge_api.txt not present")
def test_hccl_module_and_stand_in_follow_the_listed_api():
    """Every npu_bridge name unet_perf/backends/hccl.py imports is listed (a signature or an npu_init re-export),
    and the stand-in's functions have the listed parameters."""
    import ast
    import importlib
    import inspect
    import re

    listed, reexports = {}, set()
    with open(NPU_BRIDGE_API) as handle:
        for line in handle:
            line = line.strip()
            reexport = re.match(r"^([\w.]+)\s+<-\s+from\s+[\w.]+\s+import\s+(\w+)$", line)
            if reexport:
                reexports.add(reexport.group(1) + "." + reexport.group(2))
            match = re.match(r"^(npu_bridge[\w.]*)\((.*)\)$", line)
            if match:
                listed[match.group(1)] = [part.strip().split("=")[0].strip() for part in match.group(2).split(",")
                                          if part.strip()]
    with open(os.path.join(REPO, "unet_perf", "backends", "hccl.py")) as handle:
        tree = ast.parse(handle.read())
    imports = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("npu_bridge") for alias in node.names]
    assert len(imports) >= 4
    sys.path.insert(0, NPU_STUB)
    try:
        for module, name in imports:
            dotted = module + "." + name
            assert dotted in reexports or any(key == dotted or key.startswith(dotted + ".") for key in listed), dotted
            try:  # a submodule (from npu_bridge.hccl import hccl_ops) or a name in a module
                importlib.import_module(dotted)
            except ImportError:
                pass
            obj = getattr(importlib.import_module(module), name)
        for dotted in ("npu_bridge.hccl.hccl_ops.allreduce", "npu_bridge.hccl.hccl_ops.broadcast",
                       "npu_bridge.estimator.npu_ops.initialize_system",
                       "npu_bridge.estimator.npu_ops.shutdown_system",
                       "npu_bridge.estimator.npu.npu_optimizer.npu_distributed_optimizer_wrapper",
                       "npu_bridge.estimator.npu.npu_optimizer.npu_allreduce",
                       "npu_bridge.estimator.npu.npu_optimizer.allreduce",
                       "npu_bridge.estimator.npu.util.get_ranksize"):
            module, name = dotted.rsplit(".", 1)
            obj = getattr(importlib.import_module(module), name)
            assert list(inspect.signature(obj).parameters) == listed[dotted], dotted
    finally:
        sys.path.remove(NPU_STUB)
        forget_stand_in()

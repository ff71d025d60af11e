"""tools/train_{performance,full}_1p.sh on the CPU with a tiny config: ModelZoo log layout, final lines, key file,
loss file, and the ModelZoo path rules (run from the model root or its test/ folder, through the test/train_*.sh
entry points the ModelZoo harness runs; the Network key is the model root's folder name)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from support import NPU_STUB, REPO

TINY = ["--max_steps=4", "--iterations_per_loop=2", "--save_checkpoints_steps=2", "--depth=2", "--base_filters=4",
        "--crop_size=32", "--synthetic_count=4", "--synthetic_size=64"]
MODEL_ROOT = "UNet_unet_perf_ID0000_for_TensorFlow"  # a ModelZoo network folder: the Network key is its name


def _run(script, args, cwd, device_id, folder="tools"):
    env = dict(os.environ, PYTHON=sys.executable, ASCEND_DEVICE_ID=device_id)
    return subprocess.run(["bash", os.path.join(REPO, folder, script)] + args, cwd=str(cwd), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=240)


def _model_root(tmp_path):
    root = tmp_path / MODEL_ROOT
    root.mkdir()
    return root


def _key_file(path):
    pairs = {}
    with open(str(path)) as handle:
        for line in handle:
            key, value = line.rstrip("\n").split(" = ", 1)
            pairs[key] = value
    return pairs


def _progress_losses(log_text):
    """The loss of each progress line "step N/T ... loss X ..." of the training log, as printed."""
    losses = []
    for line in log_text.splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[0] == "step" and "/" in fields[1]:
            losses.append(fields[fields.index("loss") + 1])
    return losses


def _final(stdout, label):
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    return float(line.split(" : ", 1)[1])


def test_performance_script_writes_modelzoo_log_and_key_file(tmp_path):
    root = _model_root(tmp_path)
    proc = _run("train_performance_1p.sh", ["--batch_size=2"] + TINY, root, "3", folder="test")  # the harness' way
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = root / "test" / "output" / "3"
    log = (out / "train_3.log").read_text()
    for label in ("Final Performance images/sec : ", "E2E Training Duration sec : ", "Final Train Accuracy : "):
        assert label in log
    fps = _final(proc.stdout, "Final Performance images/sec")
    assert fps > 0 and _final(proc.stdout, "E2E Training Duration sec") > 0

    key = _key_file(out / "{}_bs2_1p_perf.log".format(MODEL_ROOT))
    assert list(key) == ["Network", "RankSize", "BatchSize", "DeviceType", "CaseName", "ActualFPS", "TrainingTime",
                         "ActualLoss", "E2ETrainingTime"]
    assert key["Network"] == MODEL_ROOT
    assert key["CaseName"] == "{}_bs2_1p_perf".format(MODEL_ROOT) and key["RankSize"] == "1"
    assert float(key["ActualFPS"]) == pytest.approx(fps)
    assert float(key["TrainingTime"]) == pytest.approx(2 * 1000 / fps, rel=1e-2)
    # train_<CaseName>_loss.txt: one loss per Session.run (4 steps / K=2), ActualLoss is its last line.
    losses = (out / "train_{}_bs2_1p_perf_loss.txt".format(MODEL_ROOT)).read_text().splitlines()
    assert losses == _progress_losses(log) and len(losses) == 2
    assert key["ActualLoss"] == losses[-1]
    summary = json.loads((out / "model_dir" / "summary.json").read_text())
    assert float(key["ActualLoss"]) == pytest.approx(summary["final_loss"], abs=1e-4)


def test_run_from_the_test_folder_writes_where_modelzoo_scripts_do(tmp_path):
    """cur_path rules: from <root>/test the output goes to <root>/test/output (not test/test/output) and
    relative paths resolve against <root>, as when the script is run from the root."""
    root = _model_root(tmp_path)
    test_dir = root / "test"
    test_dir.mkdir()
    proc = _run("train_performance_1p.sh", ["--model_dir=runs/relative"] + TINY, test_dir, "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = test_dir / "output" / "2"
    assert (out / "train_2.log").exists() and not (test_dir / "test").exists()
    losses = (out / "train_{}_bs2_1p_perf_loss.txt".format(MODEL_ROOT)).read_text().splitlines()
    assert len(losses) == 2
    assert _key_file(out / "{}_bs2_1p_perf.log".format(MODEL_ROOT))["ActualLoss"] == losses[-1]
    assert (root / "runs" / "relative" / "summary.json").exists()
    assert not (test_dir / "runs").exists()


def test_full_script_key_file_has_accuracy_and_batch_size(tmp_path):
    proc = _run("train_full_1p.sh", ["--batch_size=4"] + TINY, tmp_path, "0")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    key = _key_file(tmp_path / "test" / "output" / "0" / "{}_bs4_1p_acc.log".format(tmp_path.name))
    assert key["BatchSize"] == "4"
    accuracy = float(key["TrainAccuracy"])
    assert 0.0 <= accuracy <= 1.0
    assert accuracy == pytest.approx(_final(proc.stdout, "Final Train Accuracy"))


def test_bad_data_path_fails_with_the_trainers_message(tmp_path):
    proc = _run("train_performance_1p.sh", ["--data_path={}".format(tmp_path / "missing")] + TINY, tmp_path, "1")
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "training failed (exit 2)" in proc.stderr
    assert not list((tmp_path / "test" / "output" / "1").glob("*_perf.log"))


# --- 8p scripts: one process per device, here 2 ranks of the stand-in npu_bridge on the CPU --------------------

HARD_TIMEOUT_8P = 480  # seconds: two ranks start, build and train on a shared 2-core machine
ONE_RUN = ["--max_steps=2", "--iterations_per_loop=2", "--save_checkpoints_steps=2", "--depth=2",
           "--base_filters=4", "--crop_size=32", "--synthetic_count=4", "--synthetic_size=64"]


def _fake_hccn_tool(tmp_path):
    """A folder with an `hccn_tool` that prints a NIC address per device (rank tables are generated from it)."""
    tools = tmp_path / "fake_tools"
    tools.mkdir()
    tool = tools / "hccn_tool"
    tool.write_text("#!/bin/sh\necho \"ipaddr:192.0.2.1$2\"\n")
    tool.chmod(0o755)
    return str(tools)


def _run_8p(script, args, cwd, ranks, extra_env=None):
    from unet_perf.launch import free_ports
    addresses = ",".join("127.0.0.1:{}".format(port) for port in free_ports(ranks))
    env = dict(os.environ, PYTHON=sys.executable, RANK_SIZE=str(ranks), NPU_STUB_HCCL_ADDRESSES=addresses,
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([NPU_STUB, os.environ.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([_fake_hccn_tool(cwd), os.environ.get("PATH", "")]))
    for name in ("TF_CONFIG", "RANK_TABLE_FILE", "RANK_ID", "JOB_ID", "ASCEND_DEVICE_ID", "DEVICE_ID"):
        env.pop(name, None)
    env.update(extra_env or {})
    # Its own process group: on a hang the script's background rank processes are killed with it, nothing else.
    proc = subprocess.Popen(["bash", os.path.join(REPO, "tools", script)] + args, cwd=str(cwd), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=HARD_TIMEOUT_8P)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_8p_performance_script_runs_one_process_per_rank_and_writes_the_key_file(tmp_path):
    from unet_perf.compat import npu_bridge_available
    if npu_bridge_available():
        pytest.skip("a real npu_bridge is installed; this runs the stand-in")
    proc = _run_8p("train_performance_8p.sh", ["--batch_size=2"] + ONE_RUN, tmp_path, 2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "test" / "output"
    table = json.loads((out / "rank_table_2p.json").read_text())  # generated (hccn_tool): no --rank_table given
    assert [device["rank_id"] for device in table["server_list"][0]["device"]] == ["0", "1"]
    assert [device["device_ip"] for device in table["server_list"][0]["device"]] == ["192.0.2.10", "192.0.2.11"]
    chief_log = (out / "0" / "train_0.log").read_text()
    other_log = (out / "1" / "train_1.log").read_text()
    assert "data parallel: 2 workers (RANK_TABLE_FILE)" in chief_log
    assert "Final Performance images/sec" in chief_log and "Final Performance" not in other_log
    assert not (out / "1" / "model_dir").exists()  # only the chief writes
    network = tmp_path.name
    key = _key_file(out / "0" / "{}_bs2_2p_perf.log".format(network))
    assert key["RankSize"] == "2" and key["CaseName"] == "{}_bs2_2p_perf".format(network)
    fps = _final(proc.stdout, "Final Performance images/sec")
    assert float(key["ActualFPS"]) == pytest.approx(fps) and fps > 0
    # ms per step of one device's batch from the global rate, as the ModelZoo 8p scripts compute it
    assert float(key["TrainingTime"]) == pytest.approx(2 * 2 * 1000 / fps, rel=1e-2)
    losses = (out / "0" / "train_{}_bs2_2p_perf_loss.txt".format(network)).read_text().splitlines()
    assert losses == _progress_losses(chief_log) and len(losses) == 1
    assert [(out / str(rank) / "exit_code").read_text().strip() for rank in (0, 1)] == ["0", "0"]


def test_8p_rank_size_that_disagrees_with_the_rank_table_is_a_one_line_error(tmp_path):
    from unet_perf import rank_table
    table = tmp_path / "table.json"
    table.write_text(json.dumps(rank_table.generate(2, device_ip=lambda device: "192.0.2.{}".format(device))))
    proc = _run_8p("train_performance_8p.sh", ["--rank_table={}".format(table)] + ONE_RUN, tmp_path, 8)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "RANK_SIZE=8 disagrees" in errors[0] and "set RANK_SIZE=2" in errors[0]
    assert not list((tmp_path / "test" / "output").glob("*/train_*.log"))  # nothing started

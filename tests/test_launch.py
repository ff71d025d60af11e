"""unet_perf.launch without TensorFlow: the workers it starts get distinct free ports in one TF_CONFIG, disjoint
core shares, TF_CPP_MIN_LOG_LEVEL=3 unless set, rank-prefixed output, forwarded signals; after the first failure
(named with its exit status or signal) the others get --grace seconds to stop by themselves, and the launcher exits
with the first failure's status."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unet_perf.launch import core_shares

from support import REPO

HARD_TIMEOUT = 60
# A stand-in worker (`--entry`): prints what the launcher gave it, then behaves as its flags say.
PROBE = '''
import json, os, signal, sys, time
config = json.loads(os.environ["TF_CONFIG"])
rank = config["task"]["index"]
print("config", json.dumps({"rank": rank, "workers": config["cluster"]["worker"],
                            "cores": sorted(os.sched_getaffinity(0)),
                            "log_level": os.environ.get("TF_CPP_MIN_LOG_LEVEL")}), flush=True)
mode = sys.argv[1]
if mode == "fail" and rank == 1:
    sys.exit(3)
if mode in ("killed", "notice") and rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "notice":  # rank 0 notices the lost peer by itself, as a training worker does, and says so
    signal.signal(signal.SIGTERM, lambda *a: (print("got SIGTERM", flush=True), sys.exit(0)))
    time.sleep(1)
    print("error: lost worker 1", flush=True)
    sys.exit(2)
if mode in ("fail", "wait", "killed"):
    signal.signal(signal.SIGTERM, lambda *a: (print("got SIGTERM", flush=True), sys.exit(0)))
    print("waiting", flush=True)
    time.sleep(50)
    sys.exit(9)
'''


@pytest.fixture
def probe_module(tmp_path):
    (tmp_path / "launch_probe.py").write_text(PROBE)
    return str(tmp_path)


def launch(probe_dir, nproc, mode, grace=1, env=None, **popen):
    env = dict(os.environ if env is None else env,
               PYTHONPATH=os.pathsep.join([REPO, probe_dir, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "unet_perf.launch", "--nproc", str(nproc), "--entry",
                             "launch_probe", "--grace", str(grace), "--", mode], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, **popen)


def configs(output):
    found = {}
    for line in output.splitlines():
        if "] config " in line:
            prefix, payload = line.split(" config ", 1)
            found[int(prefix.strip("[]"))] = json.loads(payload)
    return found


def test_workers_get_one_cluster_free_ports_and_disjoint_cores(probe_module):
    process = launch(probe_module, 2, "ok")
    output = process.communicate(timeout=HARD_TIMEOUT)[0]
    assert process.returncode == 0, output
    found = configs(output)
    assert sorted(found) == [0, 1]
    assert found[0]["workers"] == found[1]["workers"] and len(set(found[0]["workers"])) == 2
    assert all(address.startswith("127.0.0.1:") for address in found[0]["workers"])
    if len(os.sched_getaffinity(0)) >= 2:
        assert not set(found[0]["cores"]) & set(found[1]["cores"])


def test_first_failure_stops_the_others_and_sets_the_exit_status(probe_module):
    process = launch(probe_module, 2, "fail")
    output = process.communicate(timeout=HARD_TIMEOUT)[0]
    assert process.returncode == 3, output
    assert "[launch] worker 1 exited with status 3" in output
    assert "[0] got SIGTERM" in output  # it did not stop within --grace


def test_a_killed_worker_is_named_with_its_signal(probe_module):
    process = launch(probe_module, 2, "killed")
    output = process.communicate(timeout=HARD_TIMEOUT)[0]
    assert process.returncode == 128 + signal.SIGKILL, output
    launcher = [line for line in output.splitlines() if line.startswith("[launch] ")]
    assert launcher[0].startswith("[launch] worker 1 was killed by SIGKILL"), output
    assert launcher[-1] == "[launch] worker 1 was killed by SIGKILL first; worker 0 exited with status 0; exit " \
                           "status 137", output
    assert "[0] got SIGTERM" in output


def test_the_others_get_time_to_stop_by_themselves(probe_module):
    """A training worker notices a lost peer and ends with its own one-line error: not SIGTERMed before that."""
    process = launch(probe_module, 2, "notice", grace=HARD_TIMEOUT / 2)
    output = process.communicate(timeout=HARD_TIMEOUT)[0]
    assert process.returncode == 128 + signal.SIGKILL, output
    assert "[0] error: lost worker 1" in output and "got SIGTERM" not in output, output
    assert "worker 0 exited with status 2; exit status 137" in output


def test_workers_log_level_defaults_to_errors_hidden_and_follows_the_user(probe_module):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    process = launch(probe_module, 2, "ok", env=env)
    output = process.communicate(timeout=HARD_TIMEOUT)[0]
    assert [found["log_level"] for found in configs(output).values()] == ["3", "3"], output
    process = launch(probe_module, 2, "ok", env=dict(env, TF_CPP_MIN_LOG_LEVEL="0"))
    output = process.communicate(timeout=HARD_TIMEOUT)[0]
    assert [found["log_level"] for found in configs(output).values()] == ["0", "0"], output


def test_sigterm_is_forwarded_to_every_worker(probe_module):
    process = launch(probe_module, 2, "wait")
    try:
        deadline = time.time() + HARD_TIMEOUT
        lines = []
        while sum("waiting" in line for line in lines) < 2 and time.time() < deadline:
            lines.append(process.stdout.readline())
        process.send_signal(signal.SIGTERM)
        output = "".join(lines) + process.communicate(timeout=HARD_TIMEOUT)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "[0] got SIGTERM" in output and "[1] got SIGTERM" in output


@pytest.mark.parametrize("cores, count, expected", [
    ([0, 1], 2, [[0], [1]]),
    ([0, 1, 2, 3, 4], 2, [[0, 1, 2], [3, 4]]),
    ([3], 2, [[3], [3]]),  # fewer cores than workers: they share
])
def test_core_shares(cores, count, expected):
    assert core_shares(cores, count) == expected


def test_bad_nproc_is_one_line():
    process = subprocess.run([sys.executable, "-m", "unet_perf.launch", "--nproc", "0", "--", "--max_steps", "1"],
                             cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=HARD_TIMEOUT)
    assert process.returncode == 2 and process.stderr.strip().count("\n") == 0
    assert "--nproc must be at least 1" in process.stderr


def test_more_workers_than_cores_warns_in_one_line(probe_module):
    """The launcher pinned to one core: --nproc 2 warns once on stderr (and still runs); --nproc 1 does not."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, probe_module, os.environ.get("PYTHONPATH", "")]))
    one_core = sorted(os.sched_getaffinity(0))[:1]
    for nproc, warned in ((2, True), (1, False)):
        process = subprocess.run(
            [sys.executable, "-m", "unet_perf.launch", "--nproc", str(nproc), "--entry", "launch_probe", "--",
             "ok"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            timeout=HARD_TIMEOUT, preexec_fn=lambda: os.sched_setaffinity(0, one_core))
        assert process.returncode == 0, process.stdout + process.stderr
        warnings = [line for line in process.stderr.splitlines() if line.startswith("warning: --nproc")]
        assert len(warnings) == (1 if warned else 0), process.stderr
        if warned:
            assert "1 core" in warnings[0]

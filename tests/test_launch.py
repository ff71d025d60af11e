"""unet_perf.launch without TensorFlow: the workers it starts get distinct free ports in one TF_CONFIG, disjoint
core shares, rank-prefixed output, forwarded signals, and the launcher exits with the first failure."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unet_perf.launch import core_shares

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARD_TIMEOUT = 60
# A stand-in worker (`--entry`): prints what the launcher gave it, then behaves as its flags say.
PROBE = '''
import json, os, signal, sys, time
config = json.loads(os.environ["TF_CONFIG"])
rank = config["task"]["index"]
print("config", json.dumps({"rank": rank, "workers": config["cluster"]["worker"],
                            "cores": sorted(os.sched_getaffinity(0))}), flush=True)
mode = sys.argv[1]
if mode == "fail" and rank == 1:
    sys.exit(3)
if mode in ("fail", "wait"):
    signal.signal(signal.SIGTERM, lambda *a: (print("got SIGTERM", flush=True), sys.exit(0)))
    print("waiting", flush=True)
    time.sleep(50)
    sys.exit(9)
'''


@pytest.fixture
def probe_module(tmp_path):
    (tmp_path / "launch_probe.py").write_text(PROBE)
    return str(tmp_path)


def launch(probe_dir, nproc, mode, **popen):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, probe_dir, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "unet_perf.launch", "--nproc", str(nproc), "--entry",
                             "launch_probe", "--grace", "5", "--", mode], cwd=REPO, env=env,
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
    assert "[0] got SIGTERM" in output


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

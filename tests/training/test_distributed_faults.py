"""Two `python -m unet_perf.train` workers on 127.0.0.1 (TF_CONFIG): under `unet_perf.launch`, a first training run
longer than --collective_timeout (one worker starts it late) is no fault, and a SIGKILLed worker ends the other
with one line naming it, saying what happened and how long it took, with no TensorFlow/gRPC log lines, while the
launcher names the dead worker and its signal; a stop signal to one worker stops both after the same step; the
same commands then resume and finish without the non-chief ever touching its --model_dir; mismatched flags are
refused before training. The in-process tests at the end check the deadlines and the messages without peers."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from unet_perf.storage import checkpoints
from unet_perf.launch import free_ports, tf_config

from support import REPO

TIMEOUT = 30  # --collective_timeout of the workers (also bounds the start-up wait for the peer)
TOTAL = 200
ARGS = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4", "--synthetic_size",
        "64", "--iterations_per_loop", "2", "--save_checkpoints_steps", "4", "--summary_images", "0",
        "--max_steps", str(TOTAL), "--augment", "false", "--batch_size", "1",
        "--collective_timeout", str(TIMEOUT)]
START_LIMIT = 600  # seconds for TensorFlow start-up and graph building on a busy 2-core machine


def wait_for_line(process, lines, text, timeout):
    """True once a line of `lines` (filled by a reader thread) contains `text`; False after `timeout` seconds or
    when `process` has exited without printing it."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any(text in line for line in list(lines)):
            return True
        time.sleep(0.05)
    return any(text in line for line in list(lines))


class Worker(object):
    """One training process of the pair; stdout and stderr lines collected by threads."""

    def __init__(self, addresses, rank, model_dir, extra=()):
        env = dict(os.environ, TF_CONFIG=tf_config(addresses, rank), TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "unet_perf.train"] + ARGS + list(extra) +
                                        ["--model_dir", model_dir], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, universal_newlines=True)
        self.out, self.err = [], []
        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            reader = threading.Thread(target=lambda s=stream, l=lines: [l.append(x.rstrip("\n")) for x in s])
            reader.daemon = True
            reader.start()

    def wait_for(self, text, timeout):
        return wait_for_line(self.process, self.out, text, timeout)

    def finish(self, timeout):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail("worker did not exit within {} s; output:\n{}\n{}".format(
                timeout, "\n".join(self.out[-20:]), "\n".join(self.err[-20:])))

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_pair(model_dirs, extra=((), ())):
    addresses = ["127.0.0.1:{}".format(port) for port in free_ports(2)]
    return addresses, [Worker(addresses, rank, model_dirs[rank], extra[rank]) for rank in range(2)]


class Launched(object):
    """`python -m unet_perf.launch --nproc 2 -- ARGS` with the environment a user has (no TF_CPP_MIN_LOG_LEVEL);
    its output lines collected by a thread."""

    def __init__(self, args, faults):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   UNET_PERF_FAULTS=faults)
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "unet_perf.launch", "--nproc", "2", "--grace",
                                         "60", "--"] + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, universal_newlines=True)
        self.lines = []
        reader = threading.Thread(target=lambda: [self.lines.append(x.rstrip("\n")) for x in self.process.stdout])
        reader.daemon = True
        reader.start()

    def wait_for(self, text, timeout):
        return wait_for_line(self.process, self.lines, text, timeout)

    def worker_pid(self, rank):
        """The pid of the launcher's worker `rank` (a child of the launcher whose TF_CONFIG has that index)."""
        for entry in os.listdir("/proc"):
            try:
                with open("/proc/{}/stat".format(entry)) as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                with open("/proc/{}/environ".format(entry), "rb") as handle:
                    environ = handle.read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            config = [item[len(b"TF_CONFIG="):] for item in environ if item.startswith(b"TF_CONFIG=")]
            if parent == self.process.pid and config and json.loads(config[0].decode())["task"]["index"] == rank:
                return int(entry)
        raise AssertionError("no worker {} under the launcher".format(rank))

    def finish(self, timeout):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("the launcher did not exit within {} s; output:\n{}".format(timeout, "\n".join(self.lines)))

    def kill(self):
        """SIGKILL the launcher and the workers it still runs (they are in sessions of their own)."""
        if self.process.poll() is not None:
            return
        for rank in range(2):
            try:
                os.kill(self.worker_pid(rank), signal.SIGKILL)
            except (AssertionError, ProcessLookupError):
                pass
        self.process.kill()
        self.process.wait()


FIRST_RUN_TIMEOUT = 20  # --collective_timeout of the launched pair (also bounds its start-up wait)
STAGGER = 26  # worker 1 starts its first training run this late: worker 0 waits longer than FIRST_RUN_TIMEOUT
# TensorFlow's C++/gRPC lines about the broken connection, and Python tracebacks
NOISE = ("Traceback", "grpc", "GRPC", "Socket closed", "Restart your program", "StartAbort", "RingReduce",
         "ring_alg", "collective_executor")


def test_slow_first_run_then_a_killed_worker_under_the_launcher_then_stop_signal_and_resume(tmp_path):
    chief_dir, other_dir = str(tmp_path / "chief"), str(tmp_path / "other")
    args = ARGS + ["--collective_timeout", str(FIRST_RUN_TIMEOUT), "--model_dir", chief_dir]
    launched = Launched(args, "stagger_first_training_run={}".format(STAGGER))
    try:
        # The first training run waits STAGGER s for worker 1: no deadline of --collective_timeout applies to it.
        assert launched.wait_for("[0] saved checkpoint", START_LIMIT + STAGGER), "\n".join(launched.lines)
        os.kill(launched.worker_pid(1), signal.SIGKILL)
        assert launched.finish(FIRST_RUN_TIMEOUT + 120) == 128 + signal.SIGKILL, "\n".join(launched.lines)
    finally:
        launched.kill()
    survivor = [line[len("[0] "):] for line in launched.lines if line.startswith("[0] ")]
    errors = [line for line in survivor if line.startswith("error:")]
    assert len(errors) == 1, survivor[-10:]
    # names the lost worker, what happened (its port refuses connections; no timeout) and the measured duration
    match = re.search(r"lost worker 1 \(127\.0\.0\.1:\d+\): (connection refused|connection closed|timed out) "
                      r"after (\d+\.\d) s", errors[0])
    assert match and "no longer accepts connections" in errors[0], errors[0]
    assert (match.group(1) == "timed out") == ("--collective_timeout" in errors[0]), errors[0]
    assert not [line for line in survivor if any(noise in line for noise in NOISE)], survivor[-20:]
    launcher = [line for line in launched.lines if line.startswith("[launch] ")]
    assert "[launch] worker 1 was killed by SIGKILL" in launcher[0], launcher
    assert "worker 0 exited with status 2" in launcher[-1] and "exit status 137" in launcher[-1], launcher
    saved = checkpoints.latest_checkpoint(chief_dir)
    assert saved is not None and 0 < checkpoints.checkpoint_step(saved) < TOTAL

    # A SIGTERM to the non-chief alone: both stop after the same step and the chief writes a checkpoint there.
    addresses, workers = start_pair([chief_dir, other_dir])
    try:
        # a checkpoint after the resume: both workers are inside their training loops
        assert workers[0].wait_for("saved checkpoint", START_LIMIT), "\n".join(workers[0].out + workers[0].err)
        assert any("resumed from" in line for line in workers[0].out)
        workers[1].process.send_signal(signal.SIGTERM)
        assert workers[1].finish(TIMEOUT + 60) == 0
        assert workers[0].finish(TIMEOUT + 60) == 0, workers[0].err[-10:]
    finally:
        for worker in workers:
            worker.kill()
    stopped = [line for line in workers[0].out if line.startswith("interrupted at step")]
    assert stopped, workers[0].out[-10:]
    step = int(re.match(r"interrupted at step (\d+)", stopped[0]).group(1))
    assert checkpoints.checkpoint_step(checkpoints.latest_checkpoint(chief_dir)) == step < TOTAL

    # The same commands resume from the chief's checkpoint and finish.
    addresses, workers = start_pair([chief_dir, other_dir])
    try:
        codes = [worker.finish(START_LIMIT + 120) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert codes == [0, 0], workers[0].err[-10:] + workers[1].err[-10:]
    assert any("resumed from" in line and "at step {}".format(step) in line for line in workers[0].out)
    assert checkpoints.checkpoint_step(checkpoints.latest_checkpoint(chief_dir)) == TOTAL
    assert any(line.startswith("Final Performance images/sec") for line in workers[0].out)
    assert workers[1].out == [] and not os.path.exists(other_dir)  # the non-chief printed and wrote nothing


def test_mismatched_flags_are_refused_before_training(tmp_path):
    dirs = [str(tmp_path / "chief"), str(tmp_path / "other")]
    _, workers = start_pair(dirs, extra=((), ("--learning_rate", "0.5")))
    try:
        codes = [worker.finish(START_LIMIT) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert codes == [2, 2]
    for worker in workers:
        errors = [line for line in worker.err if line.startswith("error:")]
        assert len(errors) == 1 and "same configuration" in errors[0], worker.err[-5:]
    assert not os.path.exists(os.path.join(dirs[0], "checkpoint"))


# --- in-process: deadlines and messages, no peers --------------------------------------------------------------

def two_workers(peer_port):
    from unet_perf import cluster as cluster_lib
    return cluster_lib.Cluster(0, 2, ["127.0.0.1:{}".format(free_ports(1)[0]), "127.0.0.1:{}".format(peer_port)],
                               "TF_CONFIG")


class RecordingSession(object):
    """Stands in for a session: records the deadline of every run; `fail` raises instead."""

    def __init__(self, fail=None):
        self.timeouts, self.fail = [], fail

    def run(self, fetches, feed_dict=None, options=None):
        self.timeouts.append(options.timeout_in_ms / 1000.0 if options is not None else None)
        if self.fail is not None:
            raise self.fail
        return 0.0 if fetches == "agreed" else {"global_step": 2}


def test_first_runs_have_a_long_deadline_later_ones_collective_timeout():
    from unet_perf.backends.base import FIRST_RUN_TIMEOUT_SEC
    from unet_perf.backends.collective import HostCollectives
    from unet_perf.backends.host import HostBackend
    from unet_perf.compat import v1
    from unet_perf.training.team import Team

    collectives = HostCollectives(two_workers(free_ports(1)[0]), timeout_sec=30)
    # every run without its own RunOptions (initialisation, restore, broadcast, savers, validation): the long bound
    assert collectives.configure(v1.ConfigProto()).operation_timeout_in_ms == FIRST_RUN_TIMEOUT_SEC * 1000
    team = Team(collectives.cluster, HostBackend(collectives=collectives))
    team._vote = ("wish", "agreed")  # what build_vote adds to the training graph
    sess = RecordingSession()
    for _ in range(3):
        assert not team.agree_to_stop(sess, False)
        team.run(sess, "fetches")
    # vote, first run, the vote after it (peers may still be compiling), then --collective_timeout
    assert sess.timeouts == [FIRST_RUN_TIMEOUT_SEC] * 3 + [30.0] * 3


def test_lost_peer_message_says_what_happened_and_how_long_it_took():
    from unet_perf.backends.collective import HostCollectives
    from unet_perf.backends.host import HostBackend
    from unet_perf.compat import v1
    from unet_perf.training.team import Team
    from unet_perf.errors import UserError

    gone = free_ports(1)[0]  # nobody listens there: the peer was killed
    collectives = HostCollectives(two_workers(gone), timeout_sec=30)
    team = Team(collectives.cluster, HostBackend(collectives=collectives))
    refused = v1.errors.UnavailableError(None, None, "failed to connect to all addresses; last error: UNKNOWN: "
                                                     "ipv4:127.0.0.1:{}: Connection refused".format(gone))
    with pytest.raises(UserError) as info:
        team.run(RecordingSession(fail=refused), "fetches")
    message = str(info.value)
    assert "while training: lost worker 1 (127.0.0.1:{}): connection refused after ".format(gone) in message
    assert "no longer accepts connections" in message and "--collective_timeout" not in message
    assert "\n" not in message

    message = str(collectives.peer_failure(v1.errors.DeadlineExceededError(None, None, "Deadline Exceeded"),
                                           "agreeing whether to stop", 30.04, 30.0))
    assert "lost worker 1 (127.0.0.1:{}): timed out after 30.0 s (--collective_timeout)".format(gone) in message

    # a peer that still listens (hung, busy) but broke the connection: named from the error, said so
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    busy = listener.getsockname()[1]
    try:
        collectives = HostCollectives(two_workers(busy), timeout_sec=30)
        closed = v1.errors.UnavailableError(None, None, "Socket closed\nfrom remote target "
                                                        "/job:worker/replica:0/task:1 while calling RecvBuf")
        message = str(collectives.peer_failure(closed, "training", 0.61, 30.0))
    finally:
        listener.close()
    assert "lost worker 1 (127.0.0.1:{}): connection closed after 0.6 s; it still accepts connections".format(
        busy) in message


def test_hccl_keeps_its_own_timeout_and_says_timed_out_when_it_did(tmp_path):
    from unet_perf import cluster as cluster_lib
    from unet_perf.backends.base import FIRST_RUN_TIMEOUT_SEC
    from unet_perf.backends.hccl import NpuCollectives
    from unet_perf.compat import v1

    table = tmp_path / "table.json"
    table.write_text(json.dumps({"server_count": "1", "server_list": [{"server_id": "10.0.0.1", "device": [
        {"device_id": str(d), "device_ip": "192.168.100.10{}".format(d), "rank_id": str(d)} for d in range(2)]}]}))
    collectives = NpuCollectives(cluster_lib.from_rank_table(str(table), 0, 2), 600,
                                 env={"RANK_TABLE_FILE": str(table), "DEVICE_ID": "0", "JOB_ID": "job"})
    config = collectives.configure(v1.ConfigProto())
    (custom_op,) = config.graph_options.rewrite_options.custom_optimizers
    # no hccl_timeout (the device would floor 600 to 544 s): HCCL's default 1836 s or the user's HCCL_EXEC_TIMEOUT
    assert "hccl_timeout" not in custom_op.parameter_map
    assert config.operation_timeout_in_ms == FIRST_RUN_TIMEOUT_SEC * 1000  # the first run compiles for the device

    timed_out = str(collectives.peer_failure(v1.errors.DeadlineExceededError(None, None, "Timed out"),
                                             "training", 600.2, 600.0))
    assert "timed out after 600.2 s (--collective_timeout)" in timed_out and "stopped, was killed" not in timed_out
    hccl_timeout = str(collectives.peer_failure(v1.errors.InternalError(
        None, None, "EI0002: The wait execution of the Notify register times out."), "training", 1836.5, 600.0))
    assert "timed out after 1836.5 s (HCCL's execution timeout, HCCL_EXEC_TIMEOUT" in hccl_timeout
    failed = str(collectives.peer_failure(v1.errors.UnavailableError(None, None, "Connection refused"),
                                          "training", 0.6, 600.0))
    assert "failed after 0.6 s (connection refused): another of the 2 ranks stopped" in failed
    assert "timed out" not in failed and "--collective_timeout" not in failed

"""Two `python -m unet_perf.train` workers on 127.0.0.1 (TF_CONFIG): a killed worker ends the other with one line
naming it; a stop signal to one worker stops both after the same step; the same commands then resume and finish
without the non-chief ever touching its --model_dir; mismatched flags are refused before training."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from unet_perf.storage import checkpoints
from unet_perf.launch import free_ports, tf_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 30  # --collective_timeout of the workers (also bounds the start-up wait for the peer)
TOTAL = 200
ARGS = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4", "--synthetic_size",
        "64", "--iterations_per_loop", "2", "--save_checkpoints_steps", "4", "--summary_images", "0",
        "--max_steps", str(TOTAL), "--augment", "false", "--batch_size", "1",
        "--collective_timeout", str(TIMEOUT)]
START_LIMIT = 600  # seconds for TensorFlow start-up and graph building on a busy 2-core machine


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
        deadline = time.time() + timeout
        while time.time() < deadline and self.process.poll() is None:
            if any(text in line for line in list(self.out)):
                return True
            time.sleep(0.05)
        return any(text in line for line in list(self.out))

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


def test_killed_worker_stop_signal_and_resume(tmp_path):
    chief_dir, other_dir = str(tmp_path / "chief"), str(tmp_path / "other")
    addresses, workers = start_pair([chief_dir, other_dir])
    try:
        assert workers[0].wait_for("saved checkpoint", START_LIMIT), "\n".join(workers[0].out + workers[0].err)
        workers[1].process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        assert workers[0].finish(TIMEOUT + 60) == 2
        assert time.time() - killed_at < TIMEOUT + 60
    finally:
        for worker in workers:
            worker.kill()
    errors = [line for line in workers[0].err if line.startswith("error:")]
    assert len(errors) == 1 and "worker 1 ({})".format(addresses[1]) in errors[0], workers[0].err[-10:]
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

"""Kill and resume: SIGKILL after the first checkpoint and again while a checkpoint is being written, SIGTERM
stops cleanly, and the restarted run finishes at the requested step with every listed checkpoint intact."""
import glob
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from unet_perf import checkpoints
from unet_perf.compat import v1
from unet_perf.config import config_from_args
from unet_perf.trainer import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERVAL = 4  # save_checkpoints_steps
TOTAL = 120
# Base 16 makes a checkpoint big enough (~1 MB with the Adam slots) that its write can be caught in progress;
# no augmentation: building it would only slow each restart (the CLI and determinism tests cover it).
ARGS = ["--depth", "2", "--base_filters", "16", "--crop_size", "32", "--synthetic_count", "4", "--synthetic_size",
        "64", "--iterations_per_loop", "2", "--save_checkpoints_steps", str(INTERVAL), "--keep_checkpoints", "3",
        "--summary_images", "0", "--max_steps", str(TOTAL), "--learning_rate", "0.003", "--augment", "false"]


class TrainProcess(object):
    """`python -m unet_perf.train` in the background, its stdout lines collected by a thread."""

    def __init__(self, model_dir):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "unet_perf.train"] + ARGS +
                                        ["--model_dir", model_dir], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, universal_newlines=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read)
        self._reader.daemon = True
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, timeout=300, poll=0.01):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return True
            if self.process.poll() is not None:
                return predicate()
            time.sleep(poll)
        return False

    def last_step(self):
        """Global step of the last progress line ('step N/TOTAL ...'), 0 when none yet."""
        steps = [int(line.split()[1].split("/")[0]) for line in list(self.lines) if line.startswith("step ")]
        return steps[-1] if steps else 0

    def finish(self, timeout=300):
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code, self.process.stderr.read()

    def kill(self, sig=signal.SIGKILL):
        self.process.send_signal(sig)


def saved_steps(model_dir):
    return [checkpoints.step_from_path(p) for p in checkpoints.checkpoint_candidates(model_dir)]


def restored_step(lines):
    resumed = [line for line in lines if line.startswith("resumed from ")]
    assert len(resumed) == 1, lines
    return int(resumed[0].split(" at step ")[1].split()[0])


def assert_listed_checkpoints_load(model_dir):
    state = v1.train.get_checkpoint_state(model_dir)
    listed = [os.path.join(model_dir, os.path.basename(p)) for p in state.all_model_checkpoint_paths]
    assert listed and os.path.basename(state.model_checkpoint_path) == os.path.basename(listed[-1])
    for prefix in listed:
        reader = v1.train.NewCheckpointReader(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)  # raises on a truncated or damaged file
        assert int(reader.get_tensor("global_step")) == checkpoints.step_from_path(prefix)


def kill_during_a_checkpoint_write(run, model_dir, budget=1.0):
    """SIGKILL as soon as a new checkpoint temp file or data file appears; at a random moment if none is seen
    within `budget` seconds. Returns True when the kill landed while a write was visible."""
    seen = set(os.listdir(model_dir))
    deadline = time.time() + budget
    random_moment = time.time() + random.uniform(0.2, budget)
    while time.time() < min(deadline, random_moment):
        names = set(os.listdir(model_dir))
        fresh = [n for n in names - seen if ".tempstate" in n or ".data-" in n]
        if fresh:
            run.kill()
            return any(".tempstate" in n for n in fresh) or not all(
                os.path.exists(os.path.join(model_dir, n.split(".data-")[0] + ".index")) for n in fresh
                if ".data-" in n)
        seen = names
    run.kill()
    return False


def test_sigkill_twice_then_sigterm_then_finish(tmp_path):
    model_dir = str(tmp_path / "run")
    # 1. SIGKILL right after the first checkpoint is listed.
    first = TrainProcess(model_dir)
    assert first.wait_for(lambda: saved_steps(model_dir)), first.finish(5)
    first.kill()
    assert first.finish()[0] == -signal.SIGKILL
    reached = first.last_step()

    # 2. Resume; SIGKILL while a later checkpoint is being written (or at a random moment).
    second = TrainProcess(model_dir)
    assert second.wait_for(lambda: any(line.startswith("step ") for line in second.lines))
    start = restored_step(second.lines)
    assert 0 < start and reached - start <= INTERVAL
    during_write = kill_during_a_checkpoint_write(second, model_dir)
    print("second kill during a checkpoint write:", during_write, "at step", second.last_step())
    assert second.finish()[0] == -signal.SIGKILL
    reached = second.last_step()
    assert_listed_checkpoints_load(model_dir)

    # 3. Resume; SIGTERM: finish the current Session.run, write a checkpoint, exit 0.
    third = TrainProcess(model_dir)
    assert third.wait_for(lambda: third.last_step() > 0)
    start = restored_step(third.lines)
    assert reached - start <= INTERVAL, (reached, start)
    third.kill(signal.SIGTERM)
    code, err = third.finish()
    assert code == 0, err
    stopped = [line for line in third.lines if line.startswith("interrupted at step ")]
    assert len(stopped) == 1, third.lines
    step = int(stopped[0].split()[3])
    assert step == third.last_step() and step < TOTAL
    assert saved_steps(model_dir)[0] == step
    assert_listed_checkpoints_load(model_dir)

    # 4. Resume and finish at the requested total, from exactly where SIGTERM stopped.
    fourth = TrainProcess(model_dir)
    code, err = fourth.finish()
    assert code == 0, err
    assert restored_step(fourth.lines) == step
    assert fourth.last_step() == TOTAL
    assert saved_steps(model_dir)[0] == TOTAL and len(saved_steps(model_dir)) == 3  # keep_checkpoints
    assert_listed_checkpoints_load(model_dir)
    assert not glob.glob(os.path.join(model_dir, "*.tempstate*"))


def test_leftovers_of_a_killed_save_are_ignored_and_cleaned(tmp_path, capsys):
    """What a kill mid-save can leave: a temp file, and a data file without its index (killed between the two
    renames). The run resumes from the listed checkpoint, deletes the temp file and rewrites the orphan."""
    model_dir = str(tmp_path / "run")
    tiny = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4",
            "--synthetic_size", "64", "--iterations_per_loop", "5", "--save_checkpoints_steps", "5",
            "--summary_images", "0", "--model_dir", model_dir]
    train(config_from_args(tiny + ["--max_steps", "10"]))
    temp = os.path.join(model_dir, "model.ckpt-15.index.tempstate123")
    orphan = os.path.join(model_dir, "model.ckpt-15.data-00000-of-00001")
    for path, size in ((temp, 100), (orphan, 7)):
        with open(path, "wb") as handle:
            handle.write(b"\1" * size)
    assert checkpoints.latest_checkpoint(model_dir).endswith("model.ckpt-10")
    summary = train(config_from_args(tiny + ["--max_steps", "20"]))
    out = capsys.readouterr().out
    assert "removed the partial file of an interrupted save: {}".format(temp) in out
    assert summary["start_step"] == 10 and summary["end_step"] == 20
    assert not os.path.exists(temp)
    assert saved_steps(model_dir) == [20, 15, 10, 5]
    assert_listed_checkpoints_load(model_dir)


@pytest.mark.parametrize("keep", [2])
def test_keep_checkpoints_applies_across_restarts(tmp_path, keep):
    model_dir = str(tmp_path / "run")
    tiny = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4",
            "--synthetic_size", "64", "--iterations_per_loop", "5", "--save_checkpoints_steps", "5",
            "--summary_images", "0", "--keep_checkpoints", str(keep), "--model_dir", model_dir]
    train(config_from_args(tiny + ["--max_steps", "10"]))
    train(config_from_args(tiny + ["--max_steps", "20"]))
    assert saved_steps(model_dir) == [20, 15]
    assert sorted(n for n in os.listdir(model_dir) if n.endswith(".index")) == [
        "model.ckpt-15.index", "model.ckpt-20.index"]

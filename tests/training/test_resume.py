"""Kill and resume: SIGKILL inside a checkpoint write (a fault point, so it lands there on every machine), SIGTERM
and Ctrl-C stop cleanly, a second Ctrl-C aborts, never with a traceback, the restarted run finishes at the requested
step with every listed checkpoint intact, and the loss-scale state survives a stop and resume."""
import glob
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from unet_perf.storage import checkpoints
from unet_perf.compat import v1
from unet_perf.config import config_from_args
from unet_perf.training.run import train

from support import REPO

INTERVAL = 4  # save_checkpoints_steps
TOTAL = 120
# No augmentation: building it would only slow each restart (the CLI and determinism tests cover it).
ARGS = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4", "--synthetic_size",
        "64", "--iterations_per_loop", "2", "--save_checkpoints_steps", str(INTERVAL), "--keep_checkpoints", "3",
        "--summary_images", "0", "--max_steps", str(TOTAL), "--learning_rate", "0.003", "--augment", "false"]
TIMEOUT = 300  # hard limit for any wait on a training process


class TrainProcess(object):
    """`python -m unet_perf.train` in the background, its stdout lines collected by a thread.

    `faults` arms unet_perf.faults points through UNET_PERF_FAULTS (None: unarmed, whatever the test's environment
    holds).
    """

    def __init__(self, model_dir, faults=None, args=ARGS):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("UNET_PERF_FAULTS", None)
        if faults:
            env["UNET_PERF_FAULTS"] = faults
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "unet_perf.train"] + args +
                                        ["--model_dir", model_dir], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, universal_newlines=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read)
        self._reader.daemon = True
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, timeout=TIMEOUT, poll=0.01):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return True
            if self.process.poll() is not None:
                self._reader.join(10)
                return predicate()
            time.sleep(poll)
        return False

    def has_line(self, prefix):
        return any(line.startswith(prefix) for line in list(self.lines))

    def last_step(self):
        """Global step of the last progress line ('step N/TOTAL ...'), 0 when none yet."""
        steps = [int(line.split()[1].split("/")[0]) for line in list(self.lines) if line.startswith("step ")]
        return steps[-1] if steps else 0

    def finish(self, timeout=TIMEOUT):
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code, self.process.stderr.read()

    def kill(self, sig=signal.SIGKILL):
        self.process.send_signal(sig)

    def stop_if_running(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture
def start():
    """start(model_dir, faults=None) -> TrainProcess; every process still running at the end is killed."""
    started = []

    def launch(model_dir, faults=None, args=ARGS):
        started.append(TrainProcess(model_dir, faults, args))
        return started[-1]

    yield launch
    for process in started:
        process.stop_if_running()


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


def partial_files(model_dir):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(model_dir, "*.tempstate*")))


def test_kill_inside_a_checkpoint_write_then_sigterm_then_finish(tmp_path, start):
    model_dir = str(tmp_path / "run")
    # 1. SIGKILL inside the 2nd checkpoint write (step 8): its files are written, not yet renamed or listed.
    first = start(model_dir, faults="kill_during_checkpoint_write=2")
    code, err = first.finish()
    assert code == -signal.SIGKILL, err
    assert first.last_step() == 2 * INTERVAL
    assert saved_steps(model_dir) == [INTERVAL]  # the interrupted save is not listed
    leftovers = partial_files(model_dir)
    assert leftovers and all(name.startswith("model.ckpt-{}.".format(2 * INTERVAL)) for name in leftovers)
    assert_listed_checkpoints_load(model_dir)  # the previous checkpoint is intact

    # 2. Resume from the previous checkpoint, removing the leftovers; SIGTERM: finish the current Session.run,
    #    write a checkpoint, exit 0.
    second = start(model_dir)
    assert second.wait_for(lambda: second.last_step() > INTERVAL), second.lines
    assert restored_step(second.lines) == INTERVAL
    for name in leftovers:
        assert "removed the partial file of an interrupted save: {}".format(
            os.path.join(model_dir, name)) in second.lines
    second.kill(signal.SIGTERM)
    code, err = second.finish()
    assert code == 0, err
    stopped = [line for line in second.lines if line.startswith("interrupted at step ")]
    assert len(stopped) == 1, second.lines
    step = int(stopped[0].split()[3])
    assert step == second.last_step() and step < TOTAL
    assert saved_steps(model_dir)[0] == step
    assert_listed_checkpoints_load(model_dir)
    assert not partial_files(model_dir)

    # 3. Resume and finish at the requested total, from exactly where SIGTERM stopped.
    third = start(model_dir)
    code, err = third.finish()
    assert code == 0, err
    assert restored_step(third.lines) == step
    assert third.last_step() == TOTAL
    assert saved_steps(model_dir)[0] == TOTAL and len(saved_steps(model_dir)) == 3  # keep_checkpoints
    assert_listed_checkpoints_load(model_dir)
    assert not partial_files(model_dir)


def test_ctrl_c_saves_and_exits_0_a_second_ctrl_c_exits_130_and_never_a_traceback(tmp_path, start):
    model_dir = str(tmp_path / "run")
    # No periodic checkpoint before the end: the only save is the one Ctrl-C asks for.
    args = ARGS + ["--save_checkpoints_steps", str(TOTAL)]
    # 1. One SIGINT once training runs: the loop stops, a checkpoint is written, "interrupted at step N", exit 0.
    first = start(model_dir, args=args)
    assert first.wait_for(lambda: first.last_step() > 0), first.lines
    first.kill(signal.SIGINT)
    code, err = first.finish()
    assert code == 0, err
    assert first.has_line("SIGINT received"), first.lines
    stopped = [line for line in first.lines if line.startswith("interrupted at step ")]
    assert len(stopped) == 1, first.lines
    step = int(stopped[0].split()[3])
    assert step == first.last_step() and 0 < step < TOTAL
    assert saved_steps(model_dir) == [step]
    assert_listed_checkpoints_load(model_dir)

    # 2. Resumed; the first SIGINT starts the stop, its checkpoint write is held (a fault point), and a second
    #    SIGINT arriving there aborts at once with exit 130: no new checkpoint, the previous one intact.
    second = start(model_dir, faults="hold_during_checkpoint_write=1", args=args)
    assert second.wait_for(lambda: second.last_step() > step), second.lines
    second.kill(signal.SIGINT)
    assert second.wait_for(lambda: second.has_line("fault hold_during_checkpoint_write")), second.lines
    assert second.has_line("SIGINT received")
    second.kill(signal.SIGINT)
    code, err = second.finish()
    assert code == 130, err
    assert second.has_line("second SIGINT: aborting"), second.lines
    assert not second.has_line("interrupted at step ")
    assert saved_steps(model_dir) == [step]
    assert_listed_checkpoints_load(model_dir)
    assert_no_traceback(err)

    # 3. Ctrl-C during start-up (the first line is printed once TensorFlow is loaded, before any graph): the
    #    process ends at once with exit 130 and one line, nothing written.
    third = start(model_dir, args=args)
    assert third.wait_for(lambda: bool(third.lines)), third.lines
    third.kill(signal.SIGINT)
    code, err = third.finish()
    assert code == 130, err
    assert third.has_line("SIGINT received before training started: stopping now"), third.lines
    assert_no_traceback(err)
    assert saved_steps(model_dir) == [step]

    # 4. Two Ctrl-C 0.3 s apart while training (wherever the second lands: the current Session.run, the stop
    #    checkpoint, closing the session or the interpreter's shutdown): exit 0 or 130 (or killed by the SIGINT
    #    itself once the interpreter has shut down), never a traceback, and every listed checkpoint loads.
    fourth = start(model_dir, args=args)
    assert fourth.wait_for(lambda: fourth.last_step() > step), fourth.lines
    fourth.kill(signal.SIGINT)
    time.sleep(0.3)
    fourth.kill(signal.SIGINT)
    code, err = fourth.finish()
    assert_no_traceback(err)
    assert code in (0, 130, -signal.SIGINT), err
    assert fourth.has_line("SIGINT received: stopping"), fourth.lines
    assert code != 130 or fourth.has_line("second SIGINT: aborting now"), fourth.lines
    assert step in saved_steps(model_dir)
    assert_listed_checkpoints_load(model_dir)


def assert_no_traceback(stderr):
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


def loss_scale_state(prefix):
    reader = v1.train.NewCheckpointReader(prefix)
    return dict((name, float(reader.get_tensor("loss_scale/" + name)))
                for name in ("loss_scale", "good_steps", "skipped_steps", "scale_changes"))


def test_resume_restores_the_loss_scale_state(tmp_path, monkeypatch):
    """Dynamic scaling, growth every 3 finite steps, a NaN loss (an overflow) at step 4: at step 10 the scale,
    the skipped steps, the scale changes and the growth counter all differ from their initial values. A run stopped
    at 10 and resumed to 14 must end with the same state as an uninterrupted run to 14."""
    monkeypatch.setenv("UNET_PERF_FAULTS", "nan_loss_from_step=4,nan_loss_until_step=5")
    tiny = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4",
            "--synthetic_size", "64", "--iterations_per_loop", "2", "--save_checkpoints_steps", "2",
            "--summary_images", "0", "--augment", "false", "--loss_scale", "dynamic", "--loss_scale_init", "64",
            "--loss_scale_growth_interval", "3", "--keep_checkpoints", "10"]
    straight_dir, resumed_dir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    straight = train(config_from_args(tiny + ["--max_steps", "14", "--model_dir", straight_dir]))
    train(config_from_args(tiny + ["--max_steps", "10", "--model_dir", resumed_dir]))
    stopped = loss_scale_state(os.path.join(resumed_dir, "model.ckpt-10"))
    assert stopped["loss_scale"] != 64 and stopped["good_steps"] > 0
    assert stopped["skipped_steps"] > 0 and stopped["scale_changes"] > 0
    resumed = train(config_from_args(tiny + ["--max_steps", "14", "--model_dir", resumed_dir]))
    assert resumed["start_step"] == 10 and resumed["end_step"] == 14
    assert loss_scale_state(os.path.join(straight_dir, "model.ckpt-10")) == stopped
    assert loss_scale_state(os.path.join(resumed_dir, "model.ckpt-14")) == \
        loss_scale_state(os.path.join(straight_dir, "model.ckpt-14"))
    for key in ("loss_scale", "skipped_steps", "scale_changes"):
        assert resumed[key] == straight[key], key


def test_leftovers_of_a_killed_save_are_ignored_and_cleaned(tmp_path, capsys):
    """What a kill mid-save can leave: a temp file, and a data file without its index (killed between the two
    renames). The run resumes from the listed checkpoint, deletes the temp file and rewrites the orphan."""
    model_dir = str(tmp_path / "run")
    tiny = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4",
            "--synthetic_size", "64", "--iterations_per_loop", "5", "--save_checkpoints_steps", "5",
            "--summary_images", "0", "--model_dir", model_dir]
    train(config_from_args(tiny + ["--max_steps", "10"]))
    temp = os.path.join(model_dir, "model.ckpt-15.index.tempstate123")
    state_temp = os.path.join(model_dir, "checkpoint.tmp4242")  # a state file write killed before its rename
    orphan = os.path.join(model_dir, "model.ckpt-15.data-00000-of-00001")
    for path, size in ((temp, 100), (state_temp, 30), (orphan, 7)):
        with open(path, "wb") as handle:
            handle.write(b"\1" * size)
    assert checkpoints.latest_checkpoint(model_dir).endswith("model.ckpt-10")
    summary = train(config_from_args(tiny + ["--max_steps", "20"]))
    out = capsys.readouterr().out
    for path in (temp, state_temp):
        assert "removed the partial file of an interrupted save: {}".format(path) in out
        assert not os.path.exists(path)
    assert summary["start_step"] == 10 and summary["end_step"] == 20
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

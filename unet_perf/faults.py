"""Fault injection for tests: every point where a test can make the program fail on purpose, in one place.

A test hook, not a user feature. Points are armed only through the environment variable UNET_PERF_FAULTS, a
comma-separated list of name=value, e.g.

    UNET_PERF_FAULTS="nan_loss_from_step=20"              # the training loss is NaN from global step 20 on
    UNET_PERF_FAULTS="nan_loss_from_step=4,nan_loss_until_step=6"   # ... for steps 4 and 5 only
    UNET_PERF_FAULTS="kill_during_checkpoint_write=2"     # SIGKILL inside the 2nd checkpoint write of the process
    UNET_PERF_FAULTS="hold_during_checkpoint_write=1"     # the 1st write waits there until a signal handler exits
    UNET_PERF_FAULTS="stagger_first_training_run=20"      # worker r starts its first training run r x 20 s late

Failures that depend on the machine (a learning rate that overflows on one CPU and not on another, a kill that
lands inside a write only when the timing is right) make tests that pass or fail by luck; these points fail the
same way everywhere. Unarmed (the variable unset or empty) every hook returns at once: no graph op, no file access.
"""
import os
import signal
import time

from unet_perf.errors import UserError

ENV = "UNET_PERF_FAULTS"
# name -> what its integer value means
POINTS = {
    "nan_loss_from_step": "global step (0-based index of the step) from which the training loss is NaN",
    "nan_loss_until_step": "first global step whose loss is finite again (default: never)",
    "kill_during_checkpoint_write": "which checkpoint write of this process (1 = the first) is killed",
    "hold_during_checkpoint_write": "which checkpoint write of this process waits for a signal (at most "
                                    "HOLD_LIMIT_SEC)",
    "stagger_first_training_run": "seconds x this worker's rank its first training Session.run waits before it "
                                  "starts (as if its graph compiled that much slower)",
}
HOLD_LIMIT_SEC = 60.0

_hits = {}  # process point -> times reached in this process


def armed(name):
    """The integer value of fault `name` in UNET_PERF_FAULTS, or None when it is not armed.

    Raises UserError naming the variable when it holds an unknown point or a value that is not an integer, so a
    typo in a test cannot silently disarm a fault.
    """
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    values = {}
    for item in spec.split(","):
        key, _, value = item.strip().partition("=")
        if key not in POINTS:
            raise UserError("{}={!r}: unknown fault {!r}; known: {}".format(ENV, spec, key, ", ".join(sorted(POINTS))))
        try:
            values[key] = int(value)
        except ValueError:
            raise UserError("{}={!r}: {} needs an integer value ({})".format(ENV, spec, key, POINTS[key]))
    return values.get(name)


def nan_loss(loss, step):
    """`loss` (float tensor), made NaN for steps in [from, until) when nan_loss_from_step (and optionally
    nan_loss_until_step) is armed; `step` is the int64 global-step tensor the backend passes to the loss function
    (the step about to run). Unarmed: `loss` itself, the graph unchanged.

    The loss is multiplied (not offset) by NaN so the gradients are NaN too, as in a real divergence.
    """
    start = armed("nan_loss_from_step")
    if start is None:
        return loss
    from unet_perf.compat import v1

    poisoned = v1.greater_equal(step, v1.constant(start, step.dtype))
    until = armed("nan_loss_until_step")
    if until is not None:
        poisoned = v1.logical_and(poisoned, v1.less(step, v1.constant(until, step.dtype)))
    factor = v1.where(poisoned, v1.constant(float("nan"), loss.dtype), v1.constant(1.0, loss.dtype))
    return loss * factor


def reached(point):
    """A process-level fault point (e.g. "checkpoint_write", reached once per checkpoint write at the moment its
    files are written but not yet committed). On the N-th arrival:
    - kill_during_<point>=N: SIGKILL this process (no cleanup, no exit handlers: a power cut or the OOM killer);
    - hold_during_<point>=N: print one line and wait there until a signal handler ends the process (at most
      HOLD_LIMIT_SEC, then continue), so a test can deliver a signal at exactly this point.
    Unarmed: returns at once.
    """
    kill_at, hold_at = armed("kill_during_" + point), armed("hold_during_" + point)
    if kill_at is None and hold_at is None:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if _hits[point] == hold_at:
        print("fault hold_during_{}: holding until a signal arrives".format(point), flush=True)
        deadline = time.time() + HOLD_LIMIT_SEC
        while time.time() < deadline:
            time.sleep(0.05)  # signal handlers run between sleeps


def stagger(point, rank):
    """stagger_<point>=S: wait rank x S seconds here (the caller reaches `point` once per process), so the peers of
    a higher rank wait for it as they would for a slow graph compilation. Unarmed: returns at once."""
    seconds = armed("stagger_" + point)
    if seconds and rank:
        time.sleep(seconds * rank)

"""Fault injection for tests: every point where a test can make the program fail on purpose, in one place.

A test hook, not a user feature. Points are armed only through the environment variable UNET_PERF_FAULTS, a
comma-separated list of name=value, e.g.

    UNET_PERF_FAULTS="nan_loss_from_step=20"              # the training loss is NaN from global step 20 on
    UNET_PERF_FAULTS="kill_during_checkpoint_write=2"     # SIGKILL inside the 2nd checkpoint write of the process

Failures that depend on the machine (a learning rate that overflows on one CPU and not on another, a kill that
lands inside a write only when the timing is right) make tests that pass or fail by luck; these points fail the
same way everywhere. Unarmed (the variable unset or empty) every hook returns at once: no graph op, no file access.
"""
import os
import signal

from unet_perf.errors import UserError

ENV = "UNET_PERF_FAULTS"
# name -> what its integer value means
POINTS = {
    "nan_loss_from_step": "global step (0-based index of the step) from which the training loss is NaN",
    "kill_during_checkpoint_write": "which checkpoint write of this process (1 = the first) is killed",
}

_hits = {}  # point name -> times reached in this process


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
    """`loss` (float tensor), made NaN for steps >= N when nan_loss_from_step=N is armed; `step` is the int64
    global-step tensor the backend passes to the loss function. Unarmed: `loss` itself, the graph unchanged.

    The loss is multiplied (not offset) by NaN so the gradients are NaN too, as in a real divergence.
    """
    start = armed("nan_loss_from_step")
    if start is None:
        return loss
    from unet_perf.compat import v1

    factor = v1.where(v1.greater_equal(step, v1.constant(start, step.dtype)),
                      v1.constant(float("nan"), loss.dtype), v1.constant(1.0, loss.dtype))
    return loss * factor


def kill_point(name):
    """SIGKILL this process the N-th time the code reaches point `name` when `name`=N is armed (no cleanup, no
    exit handlers: what a power cut or the OOM killer does). Unarmed: returns at once."""
    target = armed(name)
    if target is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == target:
        os.kill(os.getpid(), signal.SIGKILL)

"""SIGINT (Ctrl-C) and SIGTERM in a training process: a clean stop, never a traceback.

    with StopRequest(say) as stop:          # the whole life of train(): start-up, the loop, closing
        ...                                  # start-up: a signal ends the process now (nothing trained yet)
        with stop.while_training():          # the loop: the first SIGINT/SIGTERM asks it to stop after its
            while not stop.requested: ...    # current Session.run and to write a checkpoint
        ...                                  # finishing (the stop checkpoint, closing the session, final lines)

A second SIGINT, or a SIGINT while finishing, ends the process at once (exit 130), also after the block when a
signal stopped it (the process is about to exit); a SIGTERM while finishing is noted and changes nothing (the
process is already ending, e.g. writing its one-line error). Ending at once is
os._exit after the message is flushed: checkpoints are written crash-safe (storage/checkpoints.py), so every checkpoint
listed so far stays intact and loadable; only the steps since the last one are lost.
"""
import contextlib
import os
import signal
import sys

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # the shell's 128 + signal number


def exit_now(code, report=None, message=None):
    """Report `message`, flush stdout and stderr, end the process with `code` (no cleanup, no traceback)."""
    try:
        if report is not None and message:
            report(message)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except (OSError, RuntimeError, ValueError):  # a closed pipe, or a handler run inside a write of that stream
        pass
    os._exit(code)


def close_session(sess):
    """sess.close(); an error of the runtime while closing (peers gone) is no news after the run ended."""
    from unet_perf.compat import v1

    try:
        sess.close()
    except v1.errors.OpError:
        pass


class StopRequest(object):
    """Signal handlers for the life of one training process; see the module docstring.

    `report(message)` prints one line (the chief's console; the non-chief passes a function printing nothing).
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, report):
        self.signal_name = None
        self.report = report
        self._phase = "start-up"  # then "training" (while_training), then "finishing"
        self._previous = {}

    def __enter__(self):
        try:
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        except ValueError:  # not the main thread: no handlers, a signal behaves as usual
            self._previous = {}
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            # After a stop by signal the process is ending: a late Ctrl-C ends it at once, never with a traceback
            # from the interpreter's (and TensorFlow's) shutdown.
            signal.signal(number, self._after_stop if self.signal_name else handler)
        return False

    def _after_stop(self, number, frame):
        if number == signal.SIGINT:
            self._abort()

    @contextlib.contextmanager
    def while_training(self):
        """Inside: the first SIGINT/SIGTERM sets `requested` instead of ending the process."""
        self._phase = "training"
        try:
            yield self
        finally:
            self._phase = "finishing"

    def _handle(self, number, frame):
        name = signal.Signals(number).name
        if self._phase == "training" and self.signal_name is None:
            self.signal_name = name
            self.report("{} received: stopping after the current loop and writing a checkpoint".format(name))
            return
        if self._phase == "start-up":
            exit_now(EXIT_CODES[name], self.report, "{} received before training started: stopping now; nothing "
                                                    "was trained, existing checkpoints are untouched".format(name))
        if number == signal.SIGINT:
            self._abort()
        # SIGTERM again, or while finishing: the process is already ending.

    def _abort(self):
        """A SIGINT once stopping or finishing: end now. Safe for the checkpoints (storage/checkpoints.py writes them
        crash-safe); only the steps since the last one are lost."""
        when = {"SIGINT": "second SIGINT", "SIGTERM": "SIGINT while stopping"}.get(
            self.signal_name, "SIGINT received while finishing")
        exit_now(EXIT_CODES["SIGINT"], self.report, "{}: aborting now; every checkpoint written so far is "
                                                    "intact".format(when))

    @property
    def requested(self):
        return self.signal_name is not None

"""Clean stops: SIGINT/SIGTERM ask the training loop to finish its current Session.run and write a checkpoint."""
import os
import signal


class StopRequest(object):
    """SIGINT/SIGTERM set a flag the loop checks after each Session.run; a second SIGINT exits at once (130)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, report):
        self.signal_name = None
        self._report = report
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
            signal.signal(number, handler)
        return False

    def _handle(self, number, frame):
        if self.signal_name is not None and number == signal.SIGINT:
            # A second Ctrl-C: stop now. Safe for the checkpoints (see checkpoints.py), only this loop is lost.
            self._report("second SIGINT: aborting without a checkpoint")
            os._exit(130)
        self.signal_name = signal.Signals(number).name
        self._report("{} received: stopping after the current loop and writing a checkpoint".format(
            self.signal_name))

    @property
    def requested(self):
        return self.signal_name is not None

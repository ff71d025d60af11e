"""Training progress: one line (or one progress-bar update) per Session.run of K steps.

A tqdm bar when stderr is a terminal and tqdm is installed; plain lines on stdout otherwise, so logs and CI
output stay grep-able. No TensorFlow here.
"""
import sys
import time


def format_duration(seconds):
    """'1:02:03' / '2:03' for a duration in seconds; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return "{}:{:02d}:{:02d}".format(hours, minutes, secs)
    return "{}:{:02d}".format(minutes, secs)


def format_line(values):
    """The plain progress line from a dict with step, total, epoch, loss, mean_loss, loss_scale, skipped_steps,
    images_per_sec, eta_sec."""
    return ("step {step}/{total}  epoch {epoch:.2f}  loss {loss:.4f}  mean {mean_loss:.4f}  "
            "scale {loss_scale:g}  skipped {skipped_steps}  img/s {images_per_sec:.1f}  eta {eta}").format(
                eta=format_duration(values.get("eta_sec")), **values)


def _tqdm_class(stream):
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress(object):
    """Reports training progress once per loop and estimates the ETA from the steady-state rate.

    The first update after start (which includes graph optimisation) is excluded from the rate.
    """

    def __init__(self, total_steps, start_step, batch_size, steps_per_epoch, out=None, bar_stream=None,
                 use_bar=None):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.out = out if out is not None else sys.stdout
        bar_stream = bar_stream if bar_stream is not None else sys.stderr
        tqdm = _tqdm_class(bar_stream) if use_bar is None or use_bar else None
        self._bar = None
        if tqdm is not None:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=bar_stream,
                             dynamic_ncols=True)
        self._step = start_step
        self._rate_start = None  # (time, step) after the first update

    def eta(self, step, now):
        if self._rate_start is None:
            return None
        start_time, start_step = self._rate_start
        if step <= start_step or now <= start_time:
            return None
        rate = (step - start_step) / (now - start_time)
        return (self.total_steps - step) / rate

    def update(self, step, loss, mean_loss, loss_scale, skipped_steps, images_per_sec, now=None):
        """Report the state after a loop ending at global step `step`; returns the values shown."""
        now = time.time() if now is None else now
        values = {
            "step": step, "total": self.total_steps, "epoch": float(step) / self.steps_per_epoch,
            "loss": float(loss), "mean_loss": float(mean_loss), "loss_scale": float(loss_scale),
            "skipped_steps": int(skipped_steps), "images_per_sec": float(images_per_sec),
            "eta_sec": self.eta(step, now),
        }
        if self._rate_start is None:
            self._rate_start = (now, step)
        if self._bar is not None:
            self._bar.update(step - self._step)
            self._bar.set_postfix_str("loss {loss:.4f} mean {mean_loss:.4f} scale {loss_scale:g} "
                                      "skipped {skipped_steps} img/s {images_per_sec:.1f}".format(**values),
                                      refresh=True)
        else:
            print(format_line(values), file=self.out)
            self.out.flush()
        self._step = step
        return values

    def write(self, message):
        """A message line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.out)
        else:
            print(message, file=self.out)
            self.out.flush()

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

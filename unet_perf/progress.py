"""Progress reports: a tqdm bar when the bar stream (stderr) is a terminal and tqdm is installed, else plain lines
on stdout, so logs and CI output stay grep-able. No TensorFlow here.

- `Progress`: training, one line (or bar update) per Session.run of K steps, with loss, rate and ETA;
- `ItemProgress`: one line (or bar update) per image, for predict and evaluate;
- `Console`: message lines that go through the bar while one is shown;
- `RateMeter`: the steady-state images/sec of a run (its first, graph-optimising Session.run excluded).
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


class BarOrLines(object):
    """The one switch between a tqdm bar on `bar_stream` (default stderr) and plain lines on `out` (default
    stdout). use_bar: None = a bar when bar_stream is a terminal and tqdm is installed, False = lines always."""

    def __init__(self, total, unit, initial=0, out=None, bar_stream=None, use_bar=None):
        self.out = out if out is not None else sys.stdout
        bar_stream = bar_stream if bar_stream is not None else sys.stderr
        tqdm = _tqdm_class(bar_stream) if use_bar is None or use_bar else None
        self._bar = None
        if tqdm is not None:
            self._bar = tqdm(total=total, initial=initial, unit=unit, file=bar_stream, dynamic_ncols=True)

    def advance(self, count, postfix, line):
        """Move the bar by `count` and show `postfix` beside it; without a bar, print `line`. None for either
        shows nothing (callers that print a line only every so many items)."""
        if self._bar is not None:
            self._bar.update(count)
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=True)
        elif line is not None:
            self._print(line)

    def write(self, message):
        """A message line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.out)
        else:
            self._print(message)

    def _print(self, line):
        print(line, file=self.out)
        self.out.flush()  # a line per loop or image must reach a piped log now, not at exit

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Progress(object):
    """Reports training progress once per loop and estimates the ETA from the steady-state rate.

    The first update after start (which includes graph optimisation) is excluded from the rate.
    """

    def __init__(self, total_steps, start_step, batch_size, steps_per_epoch, out=None, bar_stream=None,
                 use_bar=None):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self._report = BarOrLines(total_steps, "step", start_step, out, bar_stream, use_bar)
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
        postfix = ("loss {loss:.4f} mean {mean_loss:.4f} scale {loss_scale:g} skipped {skipped_steps} "
                   "img/s {images_per_sec:.1f}".format(**values))
        self._report.advance(step - self._step, postfix, format_line(values))
        self._step = step
        return values

    def write(self, message):
        """A message line that does not break the bar."""
        self._report.write(message)

    def close(self):
        self._report.close()


class ItemProgress(object):
    """One report per finished item (an image): `[3/10] name (0.42 s)` lines, or a bar showing the name."""

    def __init__(self, total, unit="img", out=None, bar_stream=None, use_bar=None):
        self.total = total
        self.done = 0
        self._report = BarOrLines(total, unit, 0, out, bar_stream, use_bar)

    def step(self, name, seconds):
        """Report item `name`, which took `seconds`."""
        self.done += 1
        self._report.advance(1, name, "[{}/{}] {} ({:.2f} s)".format(self.done, self.total, name, seconds))

    def close(self):
        self._report.close()


class Console(object):
    """Message lines for the user; while a progress bar is shown they go through it, so the bar stays intact."""

    def __init__(self, out):
        self.out = out
        self.progress = None

    def say(self, message):
        if self.progress is not None:
            self.progress.write(message)
        else:
            print(message, file=self.out)
            self.out.flush()


class RateMeter(object):
    """Images/sec over the timed Session.runs of a run, without the first one (graph optimisation)."""

    def __init__(self, images_per_run):
        self.images_per_run = images_per_run
        self.first_time = None
        self.steady_time = 0.0
        self.steady_images = 0

    def add(self, seconds):
        """Record one Session.run; returns its own rate."""
        if self.first_time is None:
            self.first_time = seconds
        else:
            self.steady_time += seconds
            self.steady_images += self.images_per_run
        return self.images_per_run / seconds if seconds > 0 else 0.0

    def result(self):
        """(images/sec, note saying what it covers)."""
        if self.steady_images:
            return self.steady_images / self.steady_time, "steady state: first Session.run excluded"
        if self.first_time:
            return self.images_per_run / self.first_time, "single Session.run: includes graph optimisation"
        return 0.0, "no training step run"

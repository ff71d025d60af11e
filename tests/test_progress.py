"""unet_perf.progress: a bar on a terminal, lines elsewhere, for training (Progress) and per image (ItemProgress)."""
import io

import pytest

from unet_perf.progress import ItemProgress, Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_item_progress_prints_one_line_per_item_without_a_terminal():
    out, stream = io.StringIO(), io.StringIO()
    progress = ItemProgress(2, out=out, bar_stream=stream)
    progress.step("a", 0.5)
    progress.step("b", 1.25)
    progress.close()
    assert out.getvalue().splitlines() == ["[1/2] a (0.50 s)", "[2/2] b (1.25 s)"]
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar_and_no_lines():
    pytest.importorskip("tqdm")
    out, terminal = io.StringIO(), Terminal()
    progress = ItemProgress(2, out=out, bar_stream=terminal)
    progress.step("slice_7", 0.5)
    progress.close()
    assert out.getvalue() == ""
    assert "1/2" in terminal.getvalue() and "slice_7" in terminal.getvalue()
    training = Progress(100, 0, 2, 50, out=out, bar_stream=Terminal(), use_bar=False)
    training.update(10, 0.5, 0.6, 1.0, 0, 20.0, now=1.0)
    assert out.getvalue().startswith("step 10/100")  # use_bar=False: lines even on a terminal

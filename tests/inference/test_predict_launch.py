"""`python -m unet_perf.launch --nproc 2 --entry unet_perf.predict`: the pages of a stack split over two workers
(127.0.0.1, free ports, a hard timeout; only the launcher started here is stopped, and it stops its workers)."""
import os
import re
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from unet_perf import predict

from support import REPO, make_model_dir

HARD_TIMEOUT = 120


def stop(process):
    """SIGTERM (the launcher forwards it to its workers), then SIGKILL if it is still running."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_two_workers_split_the_pages_and_write_what_one_process_writes(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    model_dir = make_model_dir(tmp_path / "model")[0]
    stack = str(tmp_path / "stack.tif")
    assert cv2.imwritemulti(stack, [np.random.default_rng(page).integers(0, 256, (36, 44)).astype(np.uint8)
                                    for page in range(5)])
    flags = ["--model_dir", model_dir, "--input", stack, "--batch_size", "2"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "unet_perf.launch", "--nproc", "2", "--grace", "5", "--entry", "unet_perf.predict",
         "--"] + flags + ["--output", str(tmp_path / "two")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    try:
        assert predict.main(flags + ["--output", str(tmp_path / "one")]) == 0  # the reference, while they start
        output = launcher.communicate(timeout=HARD_TIMEOUT)[0]
    finally:
        stop(launcher)
    assert launcher.returncode == 0, output[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(os.listdir(str(two))) == sorted(os.listdir(str(one)))  # prob.tif, mask.tif and the page PNGs
    for name in os.listdir(str(one)):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    predicted = dict((rank, re.findall(r"^\[{}\] \[\d+/\d+\] (\S+) \(".format(rank), output, re.M))
                     for rank in (0, 1))
    assert predicted == {0: ["stack_0", "stack_2", "stack_4"], 1: ["stack_1", "stack_3"]}, output[-3000:]

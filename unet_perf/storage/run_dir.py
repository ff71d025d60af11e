"""What a run directory (--model_dir) holds, named once, and the checks made before anything is written to it.

    <model_dir>/config.json        the Config the run was trained with (inference rebuilds the model from it)
    <model_dir>/summary.json       the finished run's figures
    <model_dir>/checkpoint, model.ckpt-<step>.*   the latest checkpoints (storage.checkpoints)
    <model_dir>/best/              the best checkpoint by validation, with best/metrics.json
    <model_dir>/eval/              what `python -m unet_perf.evaluate` writes by default
"""
import os

from unet_perf.errors import UserError

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
BEST_DIR = "best"
BEST_METRICS = "metrics.json"
EVAL_DIR = "eval"


def check_model_dir(model_dir):
    """UserError now (before any work) if `model_dir` cannot be created or written. Creates nothing."""
    path = os.path.abspath(model_dir)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UserError("--model_dir {} is a file, not a directory; pass a directory path".format(model_dir))
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError("--model_dir {} is not writable; choose a writable directory".format(model_dir))
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError("--model_dir {} cannot be created: {} is a file; pass another path".format(
            model_dir, parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError("--model_dir {} cannot be created: {} is not writable; choose a writable path".format(
            model_dir, parent))


def make_model_dir(model_dir):
    check_model_dir(model_dir)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as err:
        raise UserError("cannot create --model_dir {} ({}); choose another path".format(
            model_dir, err.strerror or err))

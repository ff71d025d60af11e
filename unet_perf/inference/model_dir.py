"""Reading a trained model's directory: the Config it was trained with and the checkpoint to restore."""
import dataclasses
import json
import os

from unet_perf.config import Config
from unet_perf.errors import UserError
from unet_perf.storage import run_dir
from unet_perf.storage.checkpoints import latest_checkpoint


def load_config(model_dir):
    """The Config the model was trained with (`<model_dir>/config.json`); unknown keys are ignored."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UserError("--model_dir {} is a file; pass the directory written by python -m unet_perf.train (the "
                        "one holding config.json)".format(model_dir))
    if not os.path.isdir(model_dir):
        raise UserError("--model_dir {} does not exist; train a model first (python -m unet_perf.train "
                        "--model_dir {})".format(model_dir, model_dir))
    path = os.path.join(model_dir, run_dir.CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError("{} is missing; --model_dir must be a directory written by python -m unet_perf.train"
                        .format(path))
    try:
        with open(path) as handle:
            values = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError("{} is not readable JSON ({}); retrain or restore the file".format(path, err))
    known = {field.name for field in dataclasses.fields(Config)}
    return Config(**{key: value for key, value in values.items() if key in known})


def resolve_checkpoint(model_dir, checkpoint=None):
    """Checkpoint prefix to restore. checkpoint: None (best/ if present, else latest), "best", "latest", a
    directory holding a `checkpoint` state file, or a checkpoint prefix (path without .index)."""
    best_dir = os.path.join(model_dir, run_dir.BEST_DIR)
    if checkpoint in (None, "", "best", "latest"):
        candidates = {"best": [best_dir], "latest": [model_dir]}.get(checkpoint, [best_dir, model_dir])
        for directory in candidates:
            if os.path.isdir(directory):
                found = latest_checkpoint(directory)
                if found:
                    return found
        raise UserError("no checkpoint in {} (looked for a `checkpoint` state file in {}); train first or pass "
                        "--checkpoint PREFIX".format(model_dir, " and ".join(candidates)))
    if os.path.isdir(checkpoint):
        found = latest_checkpoint(checkpoint)
        if not found:
            raise UserError("--checkpoint {} holds no `checkpoint` state file; pass a checkpoint prefix such as "
                            "{}/model.ckpt-100".format(checkpoint, checkpoint))
        return found
    if not os.path.isfile(checkpoint + ".index"):
        raise UserError("--checkpoint {}: no {}.index; pass best, latest, a directory or a checkpoint prefix"
                        .format(checkpoint, checkpoint))
    return checkpoint

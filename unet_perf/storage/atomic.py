"""Files that readers never see half-written: a temp file, fsync, then os.replace onto the target."""
import json
import os

from unet_perf.errors import UserError


def atomic_write_text(path, text):
    """Write `text` to `path` via a temp file + os.replace, so readers never see half a file."""
    tmp = "{}.tmp{}".format(path, os.getpid())
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        remove_quietly(tmp)
        raise UserError("cannot write {} ({}); free disk space or choose another --model_dir".format(
            path, err.strerror or err))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass

"""Checkpoints that survive a kill at any moment: the writer, discovery of complete ones, architecture checks.

Why a kill cannot leave an unusable checkpoint (TF's V2 bundle writer, tensor_bundle.cc, is the same in 1.15 and
2.x: it writes `<prefix>.data-*` and `<prefix>.index` to `*.tempstate<random>` files and renames each when done):
- `CheckpointWriter.save` lets the Saver write under a staging prefix `model.ckpt-<step>.tempstate-save`, renames
  the finished files to `model.ckpt-<step>` (data before index), and only then replaces the `checkpoint` state
  file atomically (temp file + rename) to list it; old checkpoints are deleted only after the state file stops
  listing them. Every save uses a new prefix, so a half-written save never touches a listed checkpoint.
- Readers trust only the state file and complete file pairs (`checkpoint_candidates`), so whatever a kill leaves
  (staging or temp files, a renamed pair the state file does not list yet) is never restored from.
- `remove_partial_files` deletes staging and temp files (also those of storage.atomic) at start-up and
  after a failed save (a full disk should not stay full of our garbage); an unlisted pair is overwritten when
  its step is saved again.
- The writer keeps its own list of kept checkpoints; `recover` reloads it from the state file, so max_to_keep
  also deletes the checkpoints of earlier runs.
- Re-saving onto the prefix the state file points to would rename a new data file next to the old index: the
  trainer never saves a step twice (`CheckpointWriter.save` skips the step it restored or last saved).
Tests kill a save between its phases deterministically through faults.reached("checkpoint_write").
"""
import glob
import os
import re

from unet_perf import faults
from unet_perf.compat import v1
from unet_perf.errors import UserError
from unet_perf.storage.atomic import atomic_write_text, read_json, remove_quietly
from unet_perf.storage.run_dir import CONFIG_FILE

PREFIX = "model.ckpt"
STATE_FILE = "checkpoint"
# Temp files of interrupted writes: TF bundles and our staging prefix (*.tempstate*), atomic_write_text (*.tmp<pid>).
PARTIAL_PATTERNS = ("*.tempstate*", "*.tmp[0-9]*")
# Config fields that change the variables of the graph (names/shapes), for the architecture error message.
# ema: resuming with --ema on from a checkpoint without shadow variables cannot restore them.
ARCHITECTURE_FLAGS = ("depth", "base_filters", "num_classes", "batch_norm", "optimizer", "precision", "loss_scale",
                      "weight_map", "ema")


def op_error_reason(err):
    """The cause line of a TensorFlow error (TF 2.x prefixes it with 'Graph execution error:' and a stack)."""
    message = str(getattr(err, "message", "") or err)
    noise = ("Graph execution error", "Detected at node", "Node:", "Original stack trace", "[[")
    for line in message.splitlines():
        if line.strip() and not line[:1].isspace() and not line.startswith(noise):
            return line.strip()[:300]
    return type(err).__name__


def remove_partial_files(directory):
    """Delete the temp files of saves that never finished (killed or failed); returns their paths."""
    removed = []
    for path in sorted(set(p for pattern in PARTIAL_PATTERNS for p in glob.glob(os.path.join(directory, pattern)))):
        remove_quietly(path)
        removed.append(path)
    return removed


def _complete(prefix):
    return os.path.exists(prefix + ".index") and bool(glob.glob(glob.escape(prefix) + ".data-*"))


def checkpoint_candidates(directory):
    """Checkpoint prefixes listed in `<directory>/checkpoint` whose files exist, newest first."""
    if not os.path.isdir(directory):
        return []
    state = v1.train.get_checkpoint_state(directory)
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
    # get_checkpoint_state already joined relative entries onto `directory` (TF 1.15 and 2.x alike): joining
    # again would look for runs/x/runs/x/model.ckpt-N whenever --model_dir is relative.
    paths = [p for p in paths if _complete(p)]
    return sorted(paths, key=step_from_path, reverse=True)


def latest_checkpoint(directory):
    candidates = checkpoint_candidates(directory)
    return candidates[0] if candidates else None


def step_from_path(prefix):
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def checkpoint_step(prefix):
    """The global step stored in a checkpoint (falls back to the `-<step>` suffix of its name)."""
    try:
        return int(v1.train.load_variable(prefix, "global_step"))
    except (v1.errors.OpError, ValueError):
        return step_from_path(prefix)


def variable_shapes(variables):
    """{name: shape list} of graph variables, named as the Saver stores them."""
    return dict((var.op.name, var.shape.as_list()) for var in variables)


def architecture_differences(checkpoint_shapes, graph_shapes):
    """Human-readable differences: graph variables missing from the checkpoint or with another shape."""
    differences = []
    for name in sorted(graph_shapes):
        if name not in checkpoint_shapes:
            differences.append("{} missing in checkpoint".format(name))
        elif list(checkpoint_shapes[name]) != list(graph_shapes[name]):
            differences.append("{}: checkpoint {} vs model {}".format(
                name, list(checkpoint_shapes[name]), list(graph_shapes[name])))
    return differences


def check_compatible(prefix, variables, model_dir, cfg=None):
    """UserError unless the checkpoint holds every graph variable with the same shape (before any restore).
    Returns the checkpoint's {name: shape}, so callers need not read its metadata again."""
    try:
        checkpoint_shapes = dict(v1.train.list_variables(prefix))
    except (v1.errors.OpError, ValueError) as err:
        raise UserError("cannot read checkpoint {} ({}); delete it or use a new --model_dir".format(
            prefix, op_error_reason(err)))
    differences = architecture_differences(checkpoint_shapes, variable_shapes(variables))
    if not differences:
        return checkpoint_shapes
    flags = "--depth/--base_filters"
    saved = read_json(os.path.join(model_dir, CONFIG_FILE))
    if saved is not None and cfg is not None:
        changed = ["--{} {}".format(name, saved[name]) for name in ARCHITECTURE_FLAGS
                   if name in saved and saved[name] != getattr(cfg, name)]
        if changed:
            flags = " ".join(changed)
    raise UserError("{} holds a checkpoint of a different architecture ({}{}); use a new --model_dir or the "
                    "same {}".format(model_dir, differences[0],
                                     "; {} variables differ".format(len(differences)) if len(differences) > 1
                                     else "", flags))


class CheckpointWriter(object):
    """Writes model.ckpt-<step> in `directory`, keeps the last `max_to_keep`, never re-saves a step, and turns
    write failures (full disk, vanished directory) into UserError naming the intact checkpoint.

    A save has three phases, each safe to kill: (1) the Saver writes the files under a staging prefix
    `model.ckpt-<step>.tempstate-save` (a partial name, deleted by remove_partial_files); (2) they are renamed to
    `model.ckpt-<step>`, data file first, so an index never points at a missing data file; (3) the state file
    `checkpoint` is replaced atomically to list the new checkpoint, and only then are the oldest ones deleted.
    """

    STAGING_SUFFIX = ".tempstate-save"

    def __init__(self, directory, variables, max_to_keep):
        self.directory = directory
        self.max_to_keep = max(1, int(max_to_keep))
        self.saver = v1.train.Saver(var_list=variables, max_to_keep=None, save_relative_paths=True)
        self.listed = []  # prefixes in the state file, oldest first
        self.last_step = None

    @property
    def newest(self):
        """The newest listed prefix (what latest_checkpoint(directory) reads back from the state file), or None."""
        return self.listed[-1] if self.listed else None

    def recover(self):
        """Take over the checkpoints listed by an earlier run, so max_to_keep also deletes those."""
        candidates = checkpoint_candidates(self.directory)
        self.listed = sorted(candidates, key=step_from_path)
        if candidates:
            self.last_step = step_from_path(candidates[0])

    def restore(self, sess, prefix):
        self.saver.restore(sess, prefix)
        self.last_step = checkpoint_step(prefix)

    def save(self, sess, step):
        """Write model.ckpt-<step> unless that step is already saved; returns the prefix or None."""
        if self.last_step is not None and step <= self.last_step:
            return None
        if not os.path.isdir(self.directory):
            raise UserError("cannot write checkpoint: {} disappeared; recreate it and rerun to resume".format(
                self.directory))
        prefix = os.path.join(self.directory, "{}-{}".format(PREFIX, step))
        try:
            staging = self.saver.save(sess, prefix + self.STAGING_SUFFIX, write_meta_graph=False,
                                      write_state=False)
            faults.reached("checkpoint_write")
            for data in sorted(glob.glob(glob.escape(staging) + ".data-*")):
                os.replace(data, prefix + data[len(staging):])
            os.replace(staging + ".index", prefix + ".index")
            self._commit(prefix)
        except (v1.errors.OpError, OSError, ValueError, UserError) as err:
            remove_partial_files(self.directory)
            previous = latest_checkpoint(self.directory)
            reason = op_error_reason(err) if isinstance(err, v1.errors.OpError) else str(err)
            raise UserError("cannot write checkpoint at step {} in {} ({}); free disk space and rerun to resume "
                            "from {}".format(step, self.directory, reason,
                                             previous or "scratch (no earlier checkpoint)"))
        self.last_step = step
        return prefix

    def _commit(self, prefix):
        """List `prefix` as the newest checkpoint in the state file, then delete the ones no longer kept."""
        listed = [p for p in self.listed if p != prefix] + [prefix]
        kept, dropped = listed[-self.max_to_keep:], listed[:-self.max_to_keep]
        lines = ['model_checkpoint_path: "{}"'.format(os.path.basename(prefix))]
        lines += ['all_model_checkpoint_paths: "{}"'.format(os.path.basename(p)) for p in kept]
        atomic_write_text(os.path.join(self.directory, STATE_FILE), "\n".join(lines) + "\n")
        self.listed = kept
        for old in dropped:
            for path in glob.glob(glob.escape(old) + ".data-*") + [old + ".index"]:
                remove_quietly(path)

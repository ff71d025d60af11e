"""Runs the training loop: K steps per Session.run, progress, checkpoints, resume, validation, clean stop on
SIGINT/SIGTERM, and the ModelZoo result lines. The graph itself comes from unet_perf.graph.

    summary = train(cfg)          # cfg: a validated unet_perf.config.Config; returns the summary.json dict

Exit behaviour (the CLI maps UserError to exit 2):
- finished or already finished: returns normally (exit 0);
- SIGINT/SIGTERM: the current Session.run finishes, a checkpoint is written, "interrupted at step N" (exit 0);
- non-finite loss when the backend does no loss scaling: UserError (exit 2), nothing is saved after the bad step,
  so the newest checkpoint is the last good one.

Result lines: `Final Performance images/sec` = batch x K x loops / time in the training Session.runs, without the
first run of this process (graph optimisation) and without checkpoint/probe/validation time;
`E2E Training Duration sec` = wall time of train() (data, graph, all loops, saves); `Final Train Accuracy` =
pixel accuracy (threshold 0.5) of the final weights in inference mode on fixed centre tiles of the first training
slices (the "probe", also the TensorBoard prediction images): the backends fetch no per-batch predictions.
"""
import math
import os
import sys
import time

import cv2
import numpy as np

from unet_perf import checkpoints, compat, graph
from unet_perf.compat import v1
from unet_perf.config import config_to_dict
from unet_perf.errors import UserError
from unet_perf.interrupts import StopRequest
from unet_perf.progress import Progress
from unet_perf.summaries import SummaryLog

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
BEST_DIR = "best"
BEST_METRICS = "metrics.json"


class InferenceGraphs(object):
    """What the trainer adds to the training graph: the probe predictor and the validator (or None)."""

    def __init__(self, probe_input, probe_prob, validator):
        self.probe_input = probe_input
        self.probe_prob = probe_prob
        self.validator = validator


def inference_graphs(cfg, val, probe_count):
    """A builder for graph.build(extras=...): the probe predictor (fixed training tiles in inference mode, for the
    train accuracy and the summary images; run in its own cheap Session.run) and the validator."""
    from unet_perf.ema import reading_average
    from unet_perf.inference import build_predictor

    def build():
        with reading_average(cfg):  # with --ema, validation and best/ judge the averaged weights
            probe_input, probe_prob = build_predictor(cfg, probe_count, input_name="probe_input",
                                                      output_name="probe_probability")
            return InferenceGraphs(probe_input, probe_prob, make_validator(cfg, val))
    return build


def make_validator(cfg, val):
    """A Validator for the held-out slices, or None when there are none."""
    if val is None or len(val.images) == 0:
        return None
    from unet_perf.validation import Validator
    return Validator(cfg, val)


# --- probe: fixed training tiles for accuracy and summary images ------------------------------------------

def probe_tiles(cfg, pairs, count):
    """`count` centre tiles of the first training slices, preprocessed like inference: rescale by
    cfg.input_scale, normalise the whole slice, centre crop (mirror padding when the slice is smaller).
    Returns (normalised images float32 [n,c,c,1], raw images uint8 [n,c,c], masks uint8 [n,c,c])."""
    from unet_perf.inference import normalize_array

    crop = cfg.crop_size
    images, raws, masks = [], [], []
    for index in range(count):
        image = pairs.images[index % len(pairs.images)].astype(np.float32)
        mask = pairs.masks[index % len(pairs.masks)]
        if cfg.input_scale != 1.0:
            size = (max(1, int(round(image.shape[1] * cfg.input_scale))),
                    max(1, int(round(image.shape[0] * cfg.input_scale))))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        normalised = _centre_crop(normalize_array(image, cfg.normalize), crop)
        images.append(normalised[..., None])
        raws.append(np.clip(_centre_crop(image, crop), 0, 255).astype(np.uint8))
        masks.append(_centre_crop(mask, crop))
    return np.stack(images).astype(np.float32), np.stack(raws), np.stack(masks)


def _centre_crop(array, size):
    pad_y = max(0, size - array.shape[0])
    pad_x = max(0, size - array.shape[1])
    if pad_y or pad_x:
        array = np.pad(array, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)), "symmetric")
    top = (array.shape[0] - size) // 2
    left = (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def pixel_accuracy(prob, masks):
    """Fraction of pixels where (prob > 0.5) equals the binary mask."""
    return float(np.mean((np.asarray(prob)[..., 0] > 0.5) == (np.asarray(masks) > 0)))


def prediction_panels(raws, masks, prob):
    """PNG bytes per tile: image | ground truth | prediction side by side (uint8 gray)."""
    panels = []
    for raw, mask, p in zip(raws, masks, np.asarray(prob)[..., 0]):
        row = np.concatenate([raw, (mask > 0).astype(np.uint8) * 255,
                              np.clip(p * 255.0 + 0.5, 0, 255).astype(np.uint8)], axis=1)
        ok, encoded = cv2.imencode(".png", row)
        if ok:
            panels.append((row.shape, encoded.tobytes()))
    return panels


def _restorable(model_dir):
    """(prefix, step) of the newest complete checkpoint in model_dir, or (None, 0)."""
    prefix = checkpoints.latest_checkpoint(model_dir)
    if prefix is None:
        return None, 0
    return prefix, checkpoints.checkpoint_step(prefix)


def restore(writer, sess, prefix):
    """Restore `prefix`; a damaged checkpoint (truncated or edited by hand) is a UserError naming its files."""
    try:
        writer.restore(sess, prefix)
    except v1.errors.OpError as err:
        raise UserError("checkpoint {} is damaged ({}); delete its files ({}.*) to resume from the previous "
                        "checkpoint, or use a new --model_dir".format(
                            prefix, checkpoints.op_error_reason(err), os.path.basename(prefix)))


def _finite(*values):
    return all(math.isfinite(float(v)) for v in values)


def _crossed(previous_step, step, interval):
    return interval > 0 and step // interval > previous_step // interval


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


def train(cfg, out=None):
    """Train (or resume) per cfg; returns the summary dict also written to <model_dir>/summary.json."""
    from unet_perf import augment
    from unet_perf.data.loading import describe, load_dataset

    started = time.time()
    cfg.validate()
    console = Console(out if out is not None else sys.stdout)
    say = console.say
    if not cfg.data_path:
        say("training on the built-in synthetic set ({} slices of {}x{}, seed {}); pass --data_path for real "
            "data".format(cfg.synthetic_count, cfg.synthetic_size, cfg.synthetic_size, cfg.seed))
    model_dir = cfg.model_dir
    checkpoints.check_model_dir(model_dir)
    train_pairs, val_pairs, weights = load_dataset(cfg)
    engine = augment.describe_engine(cfg)
    say("data: train {}{}; augmentation: {}".format(
        describe(train_pairs), "; validation {}".format(describe(val_pairs)) if val_pairs is not None else "",
        engine))

    if os.path.isdir(model_dir):
        for path in checkpoints.remove_partial_files(model_dir):
            say("removed the partial file of an interrupted save: {}".format(path))
    prefix, start_step = _restorable(model_dir)
    total = cfg.total_steps
    if prefix is not None and start_step >= total:
        say("{} already holds a checkpoint at step {} >= {} total steps: nothing to train (raise --max_steps to "
            "continue)".format(model_dir, start_step, total))
        return {"status": "already_done", "end_step": start_step, "total_steps": total}
    if (total - start_step) % cfg.iterations_per_loop:
        raise UserError("the checkpoint in {} is at step {}: the remaining {} steps are not a multiple of "
                        "--iterations_per_loop {}; use the --iterations_per_loop of the first run".format(
                            model_dir, start_step, total - start_step, cfg.iterations_per_loop))

    compat.enable_graph_mode()
    if cfg.deterministic:
        compat.enable_op_determinism()
    probe_count = min(max(cfg.summary_images, cfg.batch_size), max(len(train_pairs.images), 1))
    training = graph.build(cfg, graph.pipeline_source(cfg, train_pairs, weights, start_step),
                           extras=inference_graphs(cfg, val_pairs, probe_count))
    if prefix is not None:
        checkpoints.check_compatible(prefix, training.variables, model_dir, cfg)
    checkpoints.make_model_dir(model_dir)
    checkpoints.atomic_write_json(os.path.join(model_dir, CONFIG_FILE), config_to_dict(cfg))

    with training.graph.as_default():
        writer = checkpoints.CheckpointWriter(model_dir, training.variables, cfg.keep_checkpoints)
        best = None
        if training.extras.validator is not None:
            checkpoints.make_model_dir(os.path.join(model_dir, BEST_DIR))
            best = checkpoints.CheckpointWriter(os.path.join(model_dir, BEST_DIR), training.variables, 1)
    probe = probe_tiles(cfg, train_pairs, probe_count)

    def recover_and_restore(sess):
        writer.recover()
        if best is not None:
            checkpoints.remove_partial_files(best.directory)
            best.recover()
        if prefix is not None:
            restore(writer, sess, prefix)
            say("resumed from {} at step {} (continuing to step {})".format(
                prefix, int(sess.run(training.global_step)), total))

    log = SummaryLog(model_dir, say)
    sess = None
    try:
        sess, fetches = graph.open_session(training, cfg, restore=recover_and_restore)
        start_step = int(sess.run(training.global_step))
        run = Run(cfg, sess, training, fetches, Checkpoints(writer, best), log, console, probe)
        summary = run.loop(start_step, total)
    finally:
        log.close()
        if sess is not None:
            sess.close()
    if summary["status"] == "interrupted":
        return summary
    summary.update({"duration_sec": time.time() - started, "config": config_to_dict(cfg),
                    "backend": training.backend.name, "augmentation": engine})
    summary.update(compat.describe())
    checkpoints.atomic_write_json(os.path.join(model_dir, SUMMARY_FILE), summary)
    say("Final Performance images/sec : {:.2f}".format(summary["images_per_sec"]))
    say("E2E Training Duration sec : {:.2f}".format(summary["duration_sec"]))
    say("Final Train Accuracy : {:.4f}".format(summary["train_accuracy"]))
    return summary


class Checkpoints(object):
    """The run's checkpoint writers: `latest` (every interval, resume) and `best` (by V_rand; None without
    validation). The best score so far survives restarts in best/metrics.json, written after its checkpoint."""

    def __init__(self, latest, best):
        self.latest = latest
        self.best = best
        self.best_v_rand = self._saved_best_v_rand()

    def _saved_best_v_rand(self):
        if self.best is None:
            return None
        path = os.path.join(self.best.directory, BEST_METRICS)
        if not os.path.exists(path):
            return None
        saved = checkpoints.read_json(path)
        if not isinstance(saved, dict) or not isinstance(saved.get("v_rand"), (int, float)):
            # Starting from "no best" would let a worse checkpoint overwrite best/.
            raise UserError("{} is unreadable or has no v_rand; restore it, or delete {} to start a new best "
                            "checkpoint".format(path, self.best.directory))
        return float(saved["v_rand"])

    def offer_best(self, sess, step, metrics):
        """Save `step` to best/ when its V_rand beats the best so far; True when it was saved."""
        v_rand = metrics.get("v_rand")
        if v_rand is None or (self.best_v_rand is not None and v_rand <= self.best_v_rand):
            return False
        self.best_v_rand = v_rand
        if self.best is None or not self.best.save(sess, step):
            return False
        checkpoints.atomic_write_json(os.path.join(self.best.directory, BEST_METRICS), dict(metrics, step=step))
        return True


class Run(object):
    """The loop of one process: Session.runs of K steps, logging, checkpoints, validation, stop handling."""

    def __init__(self, cfg, sess, training, fetches, saved, log, console, probe):
        self.cfg, self.sess, self.training, self.fetches = cfg, sess, training, fetches
        self.saved, self.log, self.console, self.probe = saved, log, console, probe
        self.say = console.say
        self.history = []
        self.validation = None
        self.check_loss = training.backend.loss_scale_kind(cfg)[0] == "none"

    def run_probe(self, step):
        images, raws, masks = self.probe
        extras = self.training.extras
        prob = self.sess.run(extras.probe_prob, {extras.probe_input: images})
        accuracy = pixel_accuracy(prob, masks)
        self.log.scalars(step, {"train_accuracy": accuracy})
        if self.cfg.summary_images:
            self.log.images(step, "predictions", prediction_panels(raws, masks, prob)[:self.cfg.summary_images])
        return accuracy

    def validate(self, step):
        validator = self.training.extras.validator
        if validator is None:
            return
        metrics = dict((key, float(value)) for key, value in validator.run(self.sess).items())
        self.validation = dict(metrics, step=step)
        self.log.scalars(step, dict(("validation/" + key, value) for key, value in metrics.items()))
        note = ""
        if self.saved.offer_best(self.sess, step, metrics):
            note = " (best so far, saved to {})".format(self.saved.best.directory)
        self.say("validation at step {}: {}{}".format(
            step, "  ".join("{} {:.4f}".format(k, metrics[k]) for k in sorted(metrics)), note))

    def save(self, step):
        path = self.saved.latest.save(self.sess, step)
        if path:
            self.say("saved checkpoint {}".format(path))
        return path

    def loop(self, start_step, total):
        cfg = self.cfg
        images_per_run = cfg.batch_size * cfg.iterations_per_loop
        progress = Progress(total, start_step, cfg.batch_size, cfg.steps_per_epoch, out=self.console.out)
        self.console.progress = progress
        step = start_step
        steady_time = 0.0
        steady_images = 0
        first_time = None
        values = None
        with StopRequest(self.say) as stop:
            try:
                while step < total and not stop.requested:
                    tick = time.time()
                    values = self.sess.run(self.fetches)
                    elapsed = time.time() - tick
                    previous, step = step, int(values["global_step"])
                    if first_time is None:
                        first_time = elapsed
                    else:
                        steady_time += elapsed
                        steady_images += images_per_run
                    self.check_finite(values, step)
                    rate = images_per_run / elapsed if elapsed > 0 else 0.0
                    self.history.append({"step": step, "loss": float(values["loss"]),
                                         "mean_loss": float(values["mean_loss"])})
                    progress.update(step, values["loss"], values["mean_loss"], values["loss_scale"],
                                    values["skipped_steps"], rate)
                    self.log.scalars(step, {"loss": values["loss"], "mean_loss": values["mean_loss"],
                                            "loss_scale": values["loss_scale"],
                                            "skipped_steps": values["skipped_steps"], "images_per_sec": rate})
                    if _crossed(previous, step, cfg.save_checkpoints_steps) and step < total:
                        self.save(step)
                        self.run_probe(step)
                    if _crossed(previous, step, cfg.val_every) and step < total:
                        self.validate(step)
            finally:
                progress.close()
                self.console.progress = None
            if stop.requested and step < total:
                path = self.save(step)
                self.say("interrupted at step {} ({}); rerun the same command to resume".format(
                    step, "saved {}".format(path) if path else "checkpoint already saved"))
                return {"status": "interrupted", "end_step": step, "signal": stop.signal_name}
        self.save(step)
        accuracy = self.run_probe(step)
        self.validate(step)
        if steady_images:
            images_per_sec, note = steady_images / steady_time, "steady state: first Session.run excluded"
        elif first_time:
            images_per_sec, note = images_per_run / first_time, "single Session.run: includes graph optimisation"
        else:
            images_per_sec, note = 0.0, "no training step run"
        last = values or {}
        return {
            "status": "finished", "start_step": start_step, "end_step": step, "total_steps": total,
            "steps_run": step - start_step, "history": self.history,
            "first_mean_loss": self.history[0]["mean_loss"] if self.history else None,
            "final_loss": float(last["loss"]) if values else None,
            "final_mean_loss": float(last["mean_loss"]) if values else None,
            "images_per_sec": images_per_sec, "images_per_sec_note": note, "train_accuracy": accuracy,
            "loss_scale": float(last["loss_scale"]) if values else None,
            "skipped_steps": int(last["skipped_steps"]) if values else None,
            "scale_changes": int(last["scale_changes"]) if values else None,
            "validation": self.validation, "best_v_rand": self.saved.best_v_rand,
            "checkpoint": checkpoints.latest_checkpoint(self.saved.latest.directory),
        }

    def check_finite(self, values, step):
        """Without loss scaling a non-finite loss means the weights are already broken: stop, save nothing.

        With loss scaling (as the backend resolves it: on the NPU, precision_mode decides) an overflowing step is
        skipped by the optimizer and training goes on.
        """
        if not self.check_loss or _finite(values["loss"], values["mean_loss"]):
            return
        previous = checkpoints.latest_checkpoint(self.saved.latest.directory)
        raise UserError("the loss became {} by step {} (no loss scaling); nothing was saved after it, the last good "
                        "checkpoint is {}; lower --learning_rate or use another --precision".format(
                            float(values["mean_loss"]) if not _finite(values["mean_loss"]) else float(values["loss"]),
                            step, previous or "none (delete --model_dir to start again)"))

"""Wires the training graph and runs the loop: K steps per Session.run, progress, summaries, checkpoints,
resume, validation, clean stop on SIGINT/SIGTERM, and the ModelZoo result lines.

    summary = train(cfg)          # cfg: a validated unet_perf.config.Config; returns the summary.json dict

Exit behaviour (the CLI maps UserError to exit 2):
- finished or already finished: returns normally (exit 0);
- SIGINT/SIGTERM: the current Session.run finishes, a checkpoint is written, "interrupted at step N" (exit 0);
- non-finite loss without loss scaling: UserError (exit 2), nothing is saved after the bad step, so the
  newest checkpoint is the last good one.

Result lines: `Final Performance images/sec` = batch x K x loops / time in the training Session.runs, without the
first run of this process (graph optimisation) and without checkpoint/probe/validation time;
`E2E Training Duration sec` = wall time of train() (data, graph, all loops, saves); `Final Train Accuracy` =
pixel accuracy (threshold 0.5) of the final weights in inference mode on fixed centre tiles of the first training
slices (the "probe", also the TensorBoard prediction images): the backends fetch no per-batch predictions.
"""
import math
import os
import signal
import sys
import time

import cv2
import numpy as np

from unet_perf import checkpoints, compat
from unet_perf.compat import v1
from unet_perf.config import config_to_dict
from unet_perf.errors import UserError
from unet_perf.progress import Progress

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
BEST_DIR = "best"
BEST_METRICS = "metrics.json"


# --- graph ------------------------------------------------------------------------------------------------

class TrainGraph(object):
    """Handles to everything the loop runs; built by `build_graph` inside its own tf.Graph."""

    def __init__(self, **handles):
        self.__dict__.update(handles)


def make_loss_fn(cfg, with_weights):
    """loss_fn(batch, step) for the backend: U-Net logits -> configured loss (float32).

    The loss passes through faults.nan_loss, a test hook that is the identity unless UNET_PERF_FAULTS arms it.
    """
    from unet_perf import faults, losses, model

    def loss_fn(batch, step):
        logits = model.unet(batch[0], cfg, training=True, step=step)
        weights = batch[2] if with_weights else None
        return faults.nan_loss(losses.compute_loss(logits, batch[1], weights, cfg.loss), step)

    return loss_fn


def build_graph(cfg, train, weights, val, start_step, probe_count):
    """Build the training graph (data -> K-step loop), the probe and validation graphs, and the savers."""
    from unet_perf import pipeline
    from unet_perf.backends import get_backend
    from unet_perf.inference import build_predictor

    graph = v1.Graph()
    with graph.as_default():
        v1.set_random_seed(cfg.seed)
        global_step = v1.train.get_or_create_global_step()
        dataset = pipeline.make_dataset(train.images, train.masks, weights, cfg, seed=cfg.seed,
                                        start_batch=start_step)
        iterator = pipeline.make_iterator(dataset)
        backend = get_backend(cfg)
        fetches = backend.build_train_loop(cfg, iterator.get_next, make_loss_fn(cfg, weights is not None),
                                           global_step)
        # The probe (fixed training tiles in inference mode) feeds the train accuracy and the summary images; it
        # runs in its own cheap Session.run, never inside the training loop.
        probe_input, probe_prob = build_predictor(cfg, probe_count, input_name="probe_input",
                                                  output_name="probe_probability")
        validator = make_validator(cfg, val)
        variables = v1.global_variables()
        init_ops = [v1.global_variables_initializer(), v1.local_variables_initializer()]
    return TrainGraph(graph=graph, backend=backend, fetches=fetches, iterator=iterator, global_step=global_step,
                      probe_input=probe_input, probe_prob=probe_prob, validator=validator, variables=variables,
                      init_ops=init_ops)


def make_validator(cfg, val):
    """A Validator for the held-out slices, or None (no split, or validation.py not installed)."""
    if val is None or len(val.images) == 0:
        return None
    try:
        from unet_perf.validation import Validator
    except ImportError:
        return None
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


# --- TensorBoard from numpy values (no summary ops in the training graph) ----------------------------------

class SummaryLog(object):
    """Scalars and images for TensorBoard, written from fetched numpy values. Summaries are optional: a write
    failure (e.g. a full disk) prints one warning and turns them off; checkpoints report such problems as errors."""

    def __init__(self, model_dir, warn):
        self.warn = warn
        self.writer = None
        self._guard(lambda: setattr(self, "writer", v1.summary.FileWriter(model_dir)))

    def _guard(self, action):
        try:
            action()
        except Exception as err:  # noqa: BLE001 -- any writer failure only disables summaries
            self.writer = None
            self.warn("warning: TensorBoard summaries disabled ({})".format(str(err).splitlines()[0][:200]))

    def scalars(self, step, values):
        if self.writer is None:
            return
        summary = v1.Summary()
        for tag in sorted(values):
            summary.value.add(tag=tag, simple_value=float(values[tag]))
        self._guard(lambda: self.writer.add_summary(summary, step))

    def images(self, step, tag, panels):
        if self.writer is None:
            return
        summary = v1.Summary()
        for index, (shape, png) in enumerate(panels):
            value = summary.value.add(tag="{}/{}".format(tag, index))
            value.image.height = int(shape[0])
            value.image.width = int(shape[1])
            value.image.colorspace = 1
            value.image.encoded_image_string = png
        self._guard(lambda: self.writer.add_summary(summary, step))

    def close(self):
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception:  # noqa: BLE001 -- must not mask the error that stopped training
                pass


# --- signals ----------------------------------------------------------------------------------------------

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


# --- the run ----------------------------------------------------------------------------------------------

def load_data(cfg):
    """(train Pairs, val Pairs or None, weights or None); UserError on bad data or a batch larger than the set."""
    from unet_perf.data.loading import load_dataset

    return load_dataset(cfg)


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


def train(cfg, out=None):
    """Train (or resume) per cfg; returns the summary dict also written to <model_dir>/summary.json."""
    out = out if out is not None else sys.stdout
    started = time.time()
    cfg.validate()

    def say(message):
        print(message, file=out)
        out.flush()

    if not cfg.data_path:
        say("training on the built-in synthetic set ({} slices of {}x{}, seed {}); pass --data_path for real "
            "data".format(cfg.synthetic_count, cfg.synthetic_size, cfg.synthetic_size, cfg.seed))
    model_dir = cfg.model_dir
    checkpoints.check_model_dir(model_dir)
    from unet_perf.data.loading import describe

    train_pairs, val_pairs, weights = load_data(cfg)
    say("data: train {}{}".format(describe(train_pairs),
                                   "; validation {}".format(describe(val_pairs)) if val_pairs is not None else ""))

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
    tg = build_graph(cfg, train_pairs, weights, val_pairs, start_step, probe_count)
    if prefix is not None:
        checkpoints.check_compatible(prefix, tg.variables, model_dir, cfg)
    checkpoints.make_model_dir(model_dir)
    checkpoints.atomic_write_json(os.path.join(model_dir, CONFIG_FILE), config_to_dict(cfg))

    with tg.graph.as_default():
        writer = checkpoints.CheckpointWriter(model_dir, tg.variables, cfg.keep_checkpoints)
        best = None
        if tg.validator is not None:
            checkpoints.make_model_dir(os.path.join(model_dir, BEST_DIR))
            best = checkpoints.CheckpointWriter(os.path.join(model_dir, BEST_DIR), tg.variables, 1)
    probe_images, probe_raws, probe_masks = probe_tiles(cfg, train_pairs, probe_count)
    sess = v1.Session(graph=tg.graph, config=tg.backend.session_config(cfg))
    log = SummaryLog(model_dir, say)
    try:
        sess.run(tg.init_ops)
        writer.recover()
        if best is not None:
            checkpoints.remove_partial_files(best.directory)
            best.recover()
        if prefix is not None:
            restore(writer, sess, prefix)
            start_step = int(sess.run(tg.global_step))
            say("resumed from {} at step {} (continuing to step {})".format(prefix, start_step, total))
        sess.run(tg.iterator.initializer)  # separately from the variable initialisers (NPU pitfall)
        fetches = tg.backend.prepare_session(sess, tg.fetches)
        run = Run(cfg, sess, tg, fetches, writer, best, log, out, (probe_images, probe_raws, probe_masks))
        summary = run.loop(start_step, total)
    finally:
        log.close()
        sess.close()
    if summary["status"] == "interrupted":
        return summary
    summary.update({"duration_sec": time.time() - started, "config": config_to_dict(cfg),
                    "backend": tg.backend.name})
    summary.update(compat.describe())
    checkpoints.atomic_write_json(os.path.join(model_dir, SUMMARY_FILE), summary)
    say("Final Performance images/sec : {:.2f}".format(summary["images_per_sec"]))
    say("E2E Training Duration sec : {:.2f}".format(summary["duration_sec"]))
    say("Final Train Accuracy : {:.4f}".format(summary["train_accuracy"]))
    return summary


class Run(object):
    """The loop of one process: Session.runs of K steps, logging, checkpoints, validation, stop handling."""

    def __init__(self, cfg, sess, tg, fetches, writer, best, log, out, probe):
        self.cfg, self.sess, self.tg, self.fetches = cfg, sess, tg, fetches
        self.writer, self.best, self.log, self.out, self.probe = writer, best, log, out, probe
        self.say = None
        self.history = []
        self.validation = None
        # The best score so far survives restarts in best/metrics.json, written after its checkpoint.
        saved = checkpoints.read_json(os.path.join(best.directory, BEST_METRICS)) if best is not None else None
        self.best_v_rand = saved.get("v_rand") if saved else None

    def run_probe(self, step):
        images, raws, masks = self.probe
        prob = self.sess.run(self.tg.probe_prob, {self.tg.probe_input: images})
        accuracy = pixel_accuracy(prob, masks)
        self.log.scalars(step, {"train_accuracy": accuracy})
        if self.cfg.summary_images:
            self.log.images(step, "predictions", prediction_panels(raws, masks, prob)[:self.cfg.summary_images])
        return accuracy

    def validate(self, step):
        if self.tg.validator is None:
            return
        metrics = dict((key, float(value)) for key, value in self.tg.validator.run(self.sess).items())
        self.validation = dict(metrics, step=step)
        self.log.scalars(step, dict(("validation/" + key, value) for key, value in metrics.items()))
        v_rand = metrics.get("v_rand")
        note = ""
        if v_rand is not None and (self.best_v_rand is None or v_rand > self.best_v_rand):
            self.best_v_rand = v_rand
            if self.best is not None and self.best.save(self.sess, step):
                checkpoints.atomic_write_json(os.path.join(self.best.directory, BEST_METRICS),
                                              dict(metrics, step=step))
                note = " (best so far, saved to {})".format(self.best.directory)
        self.say("validation at step {}: {}{}".format(
            step, "  ".join("{} {:.4f}".format(k, metrics[k]) for k in sorted(metrics)), note))

    def save(self, step):
        path = self.writer.save(self.sess, step)
        if path:
            self.say("saved checkpoint {}".format(path))
        return path

    def loop(self, start_step, total):
        cfg = self.cfg
        images_per_run = cfg.batch_size * cfg.iterations_per_loop
        progress = Progress(total, start_step, cfg.batch_size, cfg.steps_per_epoch, out=self.out)
        self.say = self.log.warn = progress.write
        step = start_step
        steady_time = 0.0
        steady_images = 0
        first_time = None
        values = None
        with StopRequest(progress.write) as stop:
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
            "validation": self.validation, "best_v_rand": self.best_v_rand,
            "checkpoint": checkpoints.latest_checkpoint(self.writer.directory),
        }

    def check_finite(self, values, step):
        """Without loss scaling a non-finite loss means the weights are already broken: stop, save nothing."""
        if self.cfg.loss_scale_kind()[0] != "none" or _finite(values["loss"], values["mean_loss"]):
            return
        previous = checkpoints.latest_checkpoint(self.writer.directory)
        raise UserError("the loss became {} by step {} (no loss scaling); nothing was saved after it, the last good "
                        "checkpoint is {}; lower --learning_rate or use another --precision".format(
                            float(values["mean_loss"]) if not _finite(values["mean_loss"]) else float(values["loss"]),
                            step, previous or "none (delete --model_dir to start again)"))

"""Runs the training loop: K steps per Session.run, progress, checkpoints, resume, validation, clean stop on
SIGINT/SIGTERM, and the ModelZoo result lines. The graph itself comes from unet_perf.graph.

    summary = train(cfg)          # cfg: a validated unet_perf.config.Config; returns the summary.json dict

Exit behaviour (the CLI maps UserError to exit 2; signals: unet_perf.interrupts):
- finished or already finished: returns normally (exit 0);
- SIGINT/SIGTERM while training: the current Session.run finishes, a checkpoint is written, "interrupted at step N"
  (exit 0); before training starts: ends at once (exit 130/143); a second SIGINT: ends at once (exit 130), every
  checkpoint written so far intact;
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

from unet_perf import checkpoints, compat, distributed, graph
from unet_perf.backends.base import check_loop_steps
from unet_perf.cluster import SINGLE
from unet_perf.config import config_to_dict
from unet_perf.errors import UserError
from unet_perf.interrupts import StopRequest, close_session
from unet_perf.panels import prediction_panels
from unet_perf.probe import pixel_accuracy, probe_tiles
from unet_perf.progress import Console, Progress, RateMeter
from unet_perf.run_checkpoints import RunCheckpoints, newest_restorable
from unet_perf.summaries import SummaryLog
from unet_perf.validation import inference_graphs

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


def _finite(*values):
    return all(math.isfinite(float(v)) for v in values)


def _crossed(previous_step, step, interval):
    return interval > 0 and step // interval > previous_step // interval


def train(cfg, out=None):
    """Train (or resume) per cfg; returns the summary dict also written to <model_dir>/summary.json."""
    console = Console(out if out is not None else sys.stdout)
    with StopRequest(console.say) as stop:  # SIGINT/SIGTERM from start-up to the last line
        return _train(cfg, console, stop)


def _train(cfg, console, stop):
    from unet_perf import augment
    from unet_perf.data.loading import describe, load_dataset

    started = time.time()
    cfg.validate()
    team = distributed.join(cfg)
    if not team.chief:
        return distributed.follow(cfg, team, stop)  # trains its share; prints and writes nothing
    say = console.say
    if team.size > 1:
        say(team.describe(cfg))
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
    prefix, start_step = newest_restorable(model_dir)
    start_step = team.handshake(cfg, train_pairs, start_step)
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
    training = graph.build(team.run_config(cfg), graph.pipeline_source(cfg, train_pairs, weights, start_step,
                                                                      *team.share),
                           backend=team.backend, extras=inference_graphs(cfg, val_pairs, probe_count))
    team.build_vote(training)
    if prefix is not None:
        checkpoints.check_compatible(prefix, training.variables, model_dir, cfg)
    checkpoints.make_model_dir(model_dir)
    checkpoints.atomic_write_json(os.path.join(model_dir, CONFIG_FILE), config_to_dict(cfg))

    with training.graph.as_default():
        saved = RunCheckpoints.create(model_dir, training.variables, cfg.keep_checkpoints,
                                      with_best=training.extras.validator is not None)
    probe = probe_tiles(cfg, train_pairs, probe_count)

    def recover_and_restore(sess):
        saved.recover_and_restore(sess, prefix)
        if prefix is not None:
            say("resumed from {} at step {} (continuing to step {})".format(
                prefix, int(sess.run(training.global_step)), total))

    log = SummaryLog(model_dir, say)
    sess = None
    try:
        with team.peer_errors("training"):
            sess, fetches = graph.open_session(training, cfg, restore=recover_and_restore)
            start_step = int(sess.run(training.global_step))
            run = Run(cfg, sess, training, fetches, saved, log, console, probe, team)
            summary = run.loop(start_step, total, stop)
    finally:
        log.close()
        if sess is not None:
            close_session(sess)
    if summary["status"] == "interrupted":
        return summary
    summary.update({"duration_sec": time.time() - started, "config": config_to_dict(cfg),
                    "backend": training.backend.name, "augmentation": engine, "workers": team.size,
                    "global_batch_size": cfg.batch_size * team.size})
    summary.update(compat.describe())
    checkpoints.atomic_write_json(os.path.join(model_dir, SUMMARY_FILE), summary)
    say("Final Performance images/sec : {:.2f}".format(summary["images_per_sec"]))
    say("E2E Training Duration sec : {:.2f}".format(summary["duration_sec"]))
    say("Final Train Accuracy : {:.4f}".format(summary["train_accuracy"]))
    return summary


class Run(object):
    """The loop of one process: Session.runs of K steps, logging, checkpoints, validation, stop handling."""

    def __init__(self, cfg, sess, training, fetches, saved, log, console, probe, team=None):
        self.cfg, self.sess, self.training, self.fetches = cfg, sess, training, fetches
        self.saved, self.log, self.console, self.probe = saved, log, console, probe
        self.team = team if team is not None else distributed.Team(SINGLE, training.backend)
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
            count = self.cfg.summary_images  # encode only the tiles that are logged
            self.log.images(step, "predictions", prediction_panels(raws[:count], masks[:count], prob[:count]))
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

    def loop(self, start_step, total, stop):
        """Session.runs from start_step to total; `stop` is the process's interrupts.StopRequest."""
        cfg = self.cfg
        global_batch = cfg.batch_size * self.team.size  # the rates are the whole job's
        images_per_run = global_batch * cfg.iterations_per_loop
        progress = Progress(total, start_step, global_batch, cfg.steps_per_epoch, out=self.console.out)
        self.console.progress = progress
        step = start_step
        meter = RateMeter(images_per_run)
        values = None
        with stop.while_training():
            try:
                while step < total and not self.team.agree_to_stop(self.sess, stop.requested):
                    tick = time.time()
                    values = self.team.run(self.sess, self.fetches)
                    rate = meter.add(time.time() - tick)
                    previous, step = step, int(values["global_step"])
                    check_loop_steps(previous, values, cfg.iterations_per_loop)  # loud when the loop ran != K steps
                    self.check_finite(values, step)
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
            if step < total:  # stopped early: this worker or another asked
                path = self.save(step)
                self.say("interrupted at step {} ({}); rerun the same command to resume".format(
                    step, "saved {}".format(path) if path else "checkpoint already saved"))
                return {"status": "interrupted", "end_step": step, "signal": stop.signal_name}
        self.save(step)
        accuracy = self.run_probe(step)
        self.validate(step)
        images_per_sec, note = meter.result()
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
            "checkpoint": self.saved.latest.newest,
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

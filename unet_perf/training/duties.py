"""What a rank does around the shared training loop, plugged into training.run.TrainingRun.

The chief (rank 0) reports and keeps the run: progress, TensorBoard summaries, checkpoints (restore, latest,
best), validation, the probe and the result lines, and it alone touches --model_dir. Every other rank trains its
share in silence (`FollowerDuties`). Both answer the same calls, in this order:

    announce() -> resume_point(train_pairs, val_pairs, engine) -> [already_done(step, prefix)]
    -> extras(val_pairs, train_pairs) -> prepare(training, prefix) -> restore(sess) -> start_loop(sess, start, total)
    -> after_run(previous, step, values, seconds)* -> end_loop() -> interrupted(step, signal) | finished(...)
    -> close() -> report(result, ...)
"""
import os
import time

from unet_perf import compat
from unet_perf.config import config_to_dict
from unet_perf.data.loading import summarize_slices
from unet_perf.data.synthetic import SYNTHETIC_CLASSES
from unet_perf.inference.class_metrics import SUMMARY_KEYS, labelled_accuracy, primary_metric
from unet_perf.inference.panels import class_palette, prediction_panels
from unet_perf.progress import Progress, RateMeter
from unet_perf.storage import checkpoints, run_dir
from unet_perf.storage.atomic import atomic_write_json
from unet_perf.training.checkpointing import RunCheckpoints, newest_restorable
from unet_perf.training.probe import pixel_accuracy, probe_tiles
from unet_perf.training.summaries import SummaryLog
from unet_perf.training.validation import inference_graphs


def _crossed(previous_step, step, interval):
    return interval > 0 and step // interval > previous_step // interval


class FollowerDuties(object):
    """A non-chief rank: same data and graph as the chief, its share of every batch, the chief's variables
    (broadcast when the session opens); it prints nothing and never touches --model_dir."""

    def __init__(self, cfg, team):
        self.cfg, self.team = cfg, team
        self.total = cfg.total_steps

    def say(self, message):
        pass

    def announce(self):
        pass

    def resume_point(self, train_pairs, val_pairs, engine):
        return None, 0  # the chief's step arrives through the handshake

    def already_done(self, step, prefix):
        pass

    def extras(self, val_pairs, train_pairs):
        return None

    def prepare(self, training, prefix):
        pass

    restore = None  # assembly.open_session: nothing to restore here, the broadcast brings the chief's variables

    def start_loop(self, sess, start_step, total):
        pass

    def after_run(self, previous, step, values, seconds):
        pass

    def end_loop(self):
        pass

    def last_good(self):
        return "the chief names the last good checkpoint"

    def interrupted(self, step, signal_name):
        return {"status": "interrupted", "end_step": step, "rank": self.team.cluster.rank}

    def finished(self, start_step, step, values):
        return {"status": "finished", "end_step": step, "rank": self.team.cluster.rank}

    def report(self, result, started, training, engine):
        return result

    def close(self):
        pass


class ChiefDuties(FollowerDuties):
    """Rank 0 (or the only worker): reports, checkpoints, validates and writes the result."""

    def __init__(self, cfg, team, console):
        super(ChiefDuties, self).__init__(cfg, team)
        self.console = console
        self.say = self.console.say
        self.model_dir = cfg.model_dir
        self.sess = self.saved = self.log = self.probe = self.progress = self.meter = None
        self.history = []
        self.validation = None
        self.metric = primary_metric(cfg.num_classes)  # what best/ is chosen by
        self.palette = None  # class colours of the probe images (C >= 2)

    # --- before the graph ---------------------------------------------------------------------------------------

    def announce(self):
        cfg = self.cfg
        if self.team.size > 1:
            self.say(self.team.describe(cfg))
        if not cfg.data_path:
            kind = "" if cfg.num_classes < 3 else ", {} classes: {}".format(
                cfg.num_classes, ", ".join(SYNTHETIC_CLASSES[:cfg.num_classes]))
            self.say("training on the built-in synthetic set ({} slices of {}x{}, seed {}{}); pass --data_path for "
                     "real data".format(cfg.synthetic_count, cfg.synthetic_size, cfg.synthetic_size, cfg.seed, kind))
        run_dir.check_model_dir(self.model_dir)

    def resume_point(self, train_pairs, val_pairs, engine):
        self.train_pairs = train_pairs
        classes = self.cfg.num_classes
        validation = "; validation {}".format(summarize_slices(val_pairs, classes)) if val_pairs is not None else ""
        self.say("data: train {}{}; augmentation: {}".format(summarize_slices(train_pairs, classes), validation,
                                                             engine))
        if os.path.isdir(self.model_dir):
            for path in checkpoints.remove_partial_files(self.model_dir):
                self.say("removed the partial file of an interrupted save: {}".format(path))
        return newest_restorable(self.model_dir)

    def already_done(self, step, prefix):
        if prefix is not None:
            self.say("{} already holds a checkpoint at step {} >= {} total steps: nothing to train (raise "
                     "--max_steps to continue)".format(self.model_dir, step, self.total))

    def extras(self, val_pairs, train_pairs):
        self.probe_count = min(max(self.cfg.summary_images, self.cfg.batch_size), max(len(train_pairs.images), 1))
        return inference_graphs(self.cfg, val_pairs, self.probe_count)

    def prepare(self, training, prefix):
        """Check the checkpoint fits the graph, then write config.json and open the run's checkpoints."""
        self.training, self.prefix = training, prefix
        if prefix is not None:
            checkpoints.check_compatible(prefix, training.variables, self.model_dir, self.cfg)
        run_dir.make_model_dir(self.model_dir)
        atomic_write_json(os.path.join(self.model_dir, run_dir.CONFIG_FILE), config_to_dict(self.cfg))
        with training.graph.as_default():
            self.saved = RunCheckpoints.create(self.model_dir, training.variables, self.cfg.keep_checkpoints,
                                               with_best=training.extras.validator is not None,
                                               metric=self.metric)
        self.probe = probe_tiles(self.cfg, self.train_pairs, self.probe_count)
        if self.cfg.num_classes > 1:
            self.palette = class_palette(self.cfg.num_classes, self.cfg.class_colors, self.cfg.ignore_index)
        self.log = SummaryLog(self.model_dir, self.say)

    def restore(self, sess):
        self.saved.recover_and_restore(sess, self.prefix)
        if self.prefix is not None:
            self.say("resumed from {} at step {} (continuing to step {})".format(
                self.prefix, int(sess.run(self.training.global_step)), self.total))

    # --- the loop -----------------------------------------------------------------------------------------------

    def start_loop(self, sess, start_step, total):
        self.sess = sess
        global_batch = self.cfg.batch_size * self.team.size  # the rates are the whole job's
        self.progress = Progress(total, start_step, global_batch, self.cfg.steps_per_epoch, out=self.console.out)
        self.console.progress = self.progress
        self.meter = RateMeter(global_batch * self.cfg.iterations_per_loop)

    def after_run(self, previous, step, values, seconds):
        rate = self.meter.add(seconds)
        self.history.append({"step": step, "loss": float(values["loss"]), "mean_loss": float(values["mean_loss"])})
        self.progress.update(step, values["loss"], values["mean_loss"], values["loss_scale"],
                             values["skipped_steps"], rate)
        self.log.scalars(step, {"loss": values["loss"], "mean_loss": values["mean_loss"],
                                "loss_scale": values["loss_scale"], "skipped_steps": values["skipped_steps"],
                                "images_per_sec": rate})
        if _crossed(previous, step, self.cfg.save_checkpoints_steps) and step < self.total:
            self.save(step)
            self.run_probe(step)
        if _crossed(previous, step, self.cfg.val_every) and step < self.total:
            self.validate(step)

    def end_loop(self):
        if self.progress is not None:
            self.progress.close()
        self.console.progress = None

    def last_good(self):
        previous = checkpoints.latest_checkpoint(self.model_dir)
        return "the last good checkpoint is {}".format(previous or "none (delete --model_dir to start again)")

    # --- the chief's work between and after the runs ------------------------------------------------------------

    def save(self, step):
        path = self.saved.latest.save(self.sess, step)
        if path:
            self.say("saved checkpoint {}".format(path))
        return path

    def run_probe(self, step):
        images, raws, masks = self.probe
        extras = self.training.extras
        prob = self.sess.run(extras.probe_prob, {extras.probe_input: images})
        if self.cfg.num_classes > 1:
            accuracy = labelled_accuracy(prob, masks, self.cfg.num_classes)
        else:
            accuracy = pixel_accuracy(prob, masks)
        self.log.scalars(step, {"train_accuracy": accuracy})
        if self.cfg.summary_images:
            count = self.cfg.summary_images  # encode only the tiles that are logged
            self.log.images(step, "predictions", prediction_panels(raws[:count], masks[:count], prob[:count],
                                                                   self.palette))
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
        # C >= 2: the headline scores only (the per-class ones are in TensorBoard and summary.json)
        shown = sorted(metrics) if self.cfg.num_classes == 1 else SUMMARY_KEYS
        self.say("validation at step {}: {}{}".format(
            step, "  ".join("{} {:.4f}".format(k, metrics[k]) for k in shown), note))

    def interrupted(self, step, signal_name):
        path = self.save(step)
        self.say("interrupted at step {} ({}); rerun the same command to resume".format(
            step, "saved {}".format(path) if path else "checkpoint already saved"))
        return {"status": "interrupted", "end_step": step, "signal": signal_name}

    def finished(self, start_step, step, values):
        """Final checkpoint, probe and validation (the session is still open); the run's figures."""
        self.save(step)
        accuracy = self.run_probe(step)
        self.validate(step)
        images_per_sec, note = self.meter.result()
        last = values or {}

        def last_value(key, kind=float):
            return kind(last[key]) if values else None

        summary = {
            "status": "finished", "start_step": start_step, "end_step": step, "total_steps": self.total,
            "steps_run": step - start_step, "history": self.history,
            "first_mean_loss": self.history[0]["mean_loss"] if self.history else None,
            "final_loss": last_value("loss"), "final_mean_loss": last_value("mean_loss"),
            "images_per_sec": images_per_sec, "images_per_sec_note": note, "train_accuracy": accuracy,
            "loss_scale": last_value("loss_scale"), "skipped_steps": last_value("skipped_steps", int),
            "scale_changes": last_value("scale_changes", int),
            "validation": self.validation, "best_" + self.metric: self.saved.best_score,
            "checkpoint": self.saved.latest.newest,
        }
        return summary

    def report(self, summary, started, training, engine):
        """After the session closed: summary.json and the ModelZoo result lines of a finished run."""
        if summary["status"] != "finished":
            return summary
        summary.update({"duration_sec": time.time() - started, "config": config_to_dict(self.cfg),
                        "backend": training.backend.name, "augmentation": engine, "workers": self.team.size,
                        "global_batch_size": self.cfg.batch_size * self.team.size})
        summary.update(compat.versions())
        atomic_write_json(os.path.join(self.model_dir, run_dir.SUMMARY_FILE), summary)
        self.say("Final Performance images/sec : {:.2f}".format(summary["images_per_sec"]))
        self.say("E2E Training Duration sec : {:.2f}".format(summary["duration_sec"]))
        self.say("Final Train Accuracy : {:.4f}".format(summary["train_accuracy"]))
        if self.cfg.num_classes > 1 and summary["validation"]:
            self.say("Final Validation Mean Dice : {:.4f}".format(summary["validation"]["mean_dice"]))
        return summary

    def close(self):
        if self.log is not None:
            self.log.close()

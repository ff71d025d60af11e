"""The checkpoints of one training run: `latest` (every interval, for resume) and `best/` (by the primary
validation metric: V_rand for --num_classes 1, mean Dice for C >= 2; class_metrics.primary_metric).

    saved = RunCheckpoints.create(model_dir, variables, keep, with_best, metric)   # inside the training graph
    prefix, step = newest_restorable(model_dir)                                    # before building the graph
    saved.recover_and_restore(sess, prefix)                                        # right after the initialisers
    saved.latest.save(sess, step); saved.offer_best(sess, step, metrics)

The best score so far survives restarts in best/metrics.json, written after its checkpoint; the file names its
metric ("metric"; files of older versions have none and hold v_rand).
"""
import os

from unet_perf.storage import checkpoints, run_dir
from unet_perf.storage.atomic import atomic_write_json, read_json
from unet_perf.compat import v1
from unet_perf.errors import UserError

DEFAULT_METRIC = "v_rand"  # what best/ was ranked by before the file named its metric (and still is for C = 1)


def newest_restorable(model_dir):
    """(prefix, step) of the newest complete checkpoint in model_dir, or (None, 0)."""
    prefix = checkpoints.latest_checkpoint(model_dir)
    if prefix is None:
        return None, 0
    return prefix, checkpoints.checkpoint_step(prefix)


class RunCheckpoints(object):
    """The run's checkpoint writers: `latest` and `best` (None without validation), and the best score so far of
    `metric` (the validation metric that chooses best/; higher is better)."""

    def __init__(self, latest, best, metric=DEFAULT_METRIC):
        self.latest = latest
        self.best = best
        self.metric = metric
        self.best_score = self._saved_best_score()

    @classmethod
    def create(cls, model_dir, variables, keep, with_best, metric=DEFAULT_METRIC):
        """Writers for `variables` in model_dir (keeping `keep`) and, with_best, in model_dir/best (keeping 1);
        best/ keeps the checkpoint of the highest `metric`. Call inside the training graph (they hold Savers)."""
        latest = checkpoints.CheckpointWriter(model_dir, variables, keep)
        best = None
        if with_best:
            best_dir = os.path.join(model_dir, run_dir.BEST_DIR)
            run_dir.make_model_dir(best_dir)
            best = checkpoints.CheckpointWriter(best_dir, variables, 1)
        return cls(latest, best, metric)

    def _saved_best_score(self):
        if self.best is None:
            return None
        path = os.path.join(self.best.directory, run_dir.BEST_METRICS)
        if not os.path.exists(path):
            return None
        saved = read_json(path)
        if isinstance(saved, dict) and saved.get("metric", self.metric) != self.metric:
            raise UserError("{} ranks best/ by {}, this run by {}; delete {} to start a new best checkpoint".format(
                path, saved["metric"], self.metric, self.best.directory))
        if not isinstance(saved, dict) or not isinstance(saved.get(self.metric), (int, float)):
            # Starting from "no best" would let a worse checkpoint overwrite best/.
            raise UserError("{} is unreadable or has no {}; restore it, or delete {} to start a new best "
                            "checkpoint".format(path, self.metric, self.best.directory))
        return float(saved[self.metric])

    def recover_and_restore(self, sess, prefix):
        """Take over the checkpoints of earlier runs (and drop partial saves of best/), then restore `prefix`
        (None: nothing to restore). A damaged checkpoint is a UserError naming its files."""
        self.latest.recover()
        if self.best is not None:
            checkpoints.remove_partial_files(self.best.directory)
            self.best.recover()
        if prefix is None:
            return
        try:
            self.latest.restore(sess, prefix)
        except v1.errors.OpError as err:
            raise UserError("checkpoint {} is damaged ({}); delete its files ({}.*) to resume from the previous "
                            "checkpoint, or use a new --model_dir".format(
                                prefix, checkpoints.op_error_reason(err), os.path.basename(prefix)))

    def offer_best(self, sess, step, metrics):
        """Save `step` to best/ when its score of `metric` beats the best so far; True when it was saved. A missing
        or NaN score never does."""
        score = metrics.get(self.metric)
        if score is None or score != score or (self.best_score is not None and score <= self.best_score):
            return False
        self.best_score = score
        if self.best is None or not self.best.save(sess, step):
            return False
        atomic_write_json(os.path.join(self.best.directory, run_dir.BEST_METRICS),
                          dict(metrics, step=step, metric=self.metric))
        return True

"""One training run for every rank: load the data, agree with the other workers, build the graph, run K steps
per Session.run until done or asked to stop. What only the chief does (progress, checkpoints, resume, validation,
summaries, the ModelZoo result lines) is plugged in from training.duties; the graph comes from training.assembly.

    summary = train(cfg)          # cfg: a validated unet_perf.config.Config; returns the summary.json dict

Exit behaviour (the CLI maps UserError to exit 2; signals: unet_perf.training.interrupts):
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
import sys
import time

from unet_perf import compat
from unet_perf.backends.base import check_loop_steps
from unet_perf.errors import UserError
from unet_perf.training import assembly
from unet_perf.training.duties import ChiefDuties, FollowerDuties
from unet_perf.progress import Console
from unet_perf.training.interrupts import StopRequest, close_session
from unet_perf.training.team import join


def train(cfg, out=None):
    """Train (or resume) this process's rank per cfg; returns its summary (the chief's is summary.json)."""
    started = time.time()
    console = Console(out if out is not None else sys.stdout)
    with StopRequest(console.say) as stop:  # SIGINT/SIGTERM from start-up to the last line
        cfg.validate()
        team = join(cfg)
        duties = ChiefDuties(cfg, team, console) if team.chief else FollowerDuties(cfg, team)
        stop.report = duties.say  # a follower stays silent
        return TrainingRun(cfg, team, duties, stop).execute(started)


class LossGuard(object):
    """Without loss scaling a non-finite loss means the weights are already broken: stop, save nothing.

    With loss scaling (as the backend resolves it: on the NPU, precision_mode decides) an overflowing step is
    skipped by the optimizer and training goes on.
    """

    def __init__(self, backend, cfg):
        self.active = backend.loss_scale_kind(cfg)[0] == "none"

    def check(self, values, step, last_good):
        """UserError when the loss is fatal; last_good() names the checkpoint to go back to."""
        loss, mean_loss = float(values["loss"]), float(values["mean_loss"])
        if not self.active or (math.isfinite(loss) and math.isfinite(mean_loss)):
            return
        raise UserError("the loss became {} by step {} (no loss scaling); nothing was saved after it, {}; lower "
                        "--learning_rate or use another --precision".format(
                            mean_loss if not math.isfinite(mean_loss) else loss, step, last_good()))


class TrainingRun(object):
    """The life of one rank's run; `duties` (training.duties) decides what it reports and keeps."""

    def __init__(self, cfg, team, duties, stop):
        """stop: the process's interrupts.StopRequest (entered by train)."""
        self.cfg, self.team, self.duties, self.stop = cfg, team, duties, stop

    def execute(self, started):
        from unet_perf.data.loading import class_weights_for, load_dataset
        from unet_perf.input import augment

        cfg, team, duties = self.cfg, self.team, self.duties
        duties.announce()
        train_pairs, val_pairs, weights = load_dataset(cfg)
        class_weights = class_weights_for(cfg, train_pairs)
        engine = augment.describe_engine(cfg)
        prefix, start_step = duties.resume_point(train_pairs, val_pairs, engine)
        if class_weights is not None:
            duties.say("class weights{}: {}".format(" (median frequency of the training labels)"
                                                    if cfg.class_weights == "auto" else "",
                                                    " ".join("{:.3f}".format(w) for w in class_weights)))
        start_step = team.handshake(cfg, train_pairs, start_step)
        total = cfg.total_steps
        if start_step >= total:
            duties.already_done(start_step, prefix)
            return {"status": "already_done", "end_step": start_step, "total_steps": total}
        cfg.check_resume_step(start_step)

        compat.enable_graph_mode()
        if cfg.deterministic:
            compat.enable_op_determinism()
        training = assembly.build(team.run_config(cfg),
                                  assembly.pipeline_source(cfg, train_pairs, weights, start_step, *team.share),
                                  backend=team.backend, extras=duties.extras(val_pairs, train_pairs),
                                  class_weights=class_weights)
        team.build_vote(training)
        duties.prepare(training, prefix)
        sess = None
        try:
            with team.peer_errors("training"):
                sess, fetches = assembly.open_session(training, cfg, restore=duties.restore)
                result = self.loop(sess, fetches, LossGuard(training.backend, cfg),
                                   int(sess.run(training.global_step)), total)
        finally:
            duties.close()
            if sess is not None:
                close_session(sess)
        return duties.report(result, started, training, engine)

    def loop(self, sess, fetches, guard, start_step, total):
        """Session.runs of K steps until `total` or until any worker asks to stop; returns the duties' result."""
        duties, team, stop = self.duties, self.team, self.stop
        duties.start_loop(sess, start_step, total)
        step, values = start_step, None
        with stop.while_training():
            try:
                while step < total and not team.agree_to_stop(sess, stop.requested):
                    tick = time.time()
                    values = team.run(sess, fetches)
                    seconds = time.time() - tick
                    previous = step
                    step = check_loop_steps(previous, values, self.cfg.iterations_per_loop)  # moved by exactly K
                    guard.check(values, step, duties.last_good)
                    duties.after_run(previous, step, values, seconds)
            finally:
                duties.end_loop()
            if step < total:  # stopped early: this worker or another asked
                return duties.interrupted(step, stop.signal_name)
        return duties.finished(start_step, step, values)

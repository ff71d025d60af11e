"""Host backend (CPU/GPU): K = iterations_per_loop training steps per Session.run as one in-graph while_loop.

Each loop iteration pulls a batch from the iterator, builds the loss, applies the (loss-scaled) update and advances
the global step; K = 1 builds the plain step with no loop.

Why the loop is sequential and not slower than K = 1 (measured with benchmarks/loop_overhead.py):
- every loop output carries a control dependency on the step's train op, and the step number is the loop index
  plus the global step read once before the loop, so step i+1 (its batch, weight reads and dropout seed) cannot
  start before step i's update has finished: the K-step loop equals K single steps. parallel_iterations=1 states
  the same thing to the executor (with the control dependencies, the default 10 gives identical weights);
- back_prop=False: nothing is ever differentiated through the loop, so no per-iteration accumulators;
- per step the loop executes fewer nodes than a Session.run of the plain step (the VarHandleOps and fetch
  plumbing run once per Session.run, not once per step), and the Session.run overhead is paid once per K steps;
- the while_loop is lowered to a dataflow frame before Grappler and the device rewrites run, so the loop body gets
  the plain step's fusions and casts: per step it executes the same compute ops (tests/backends/test_loop_graph.py;
  `benchmarks/loop_overhead.py --op_report` prints them on any machine).

Several workers (`collectives` given, see collective.py): each step all-reduces (mean) the unscaled gradients
before the finite check and the update, so every worker applies the same update and skips the same overflowing
steps; the fetched losses are means over the workers. Batch norm statistics stay per worker (the moving averages
are computed from each worker's own share; they are not all-reduced), so with --batch_norm the workers' moving
statistics differ and only the chief's are checkpointed.
"""
import tensorflow as tf

from unet_perf.backends.base import Backend
from unet_perf.compat import v1
from unet_perf.model.network import with_new_update_ops
from unet_perf.model.optim import make_optimizer
from unet_perf.model.precision import LossScaler


class HostBackend(Backend):
    name = "host"

    def __init__(self, parallel_iterations=1, swap_memory=False, collectives=None, plain_single_step=True):
        """plain_single_step=False runs K = 1 as a one-iteration while loop too: benchmarks/loop_overhead.py's
        "frame" variant, which separates what the while frame costs from what K steps per Session.run save."""
        self.plain_single_step = plain_single_step
        self.parallel_iterations = parallel_iterations
        self.swap_memory = swap_memory
        self.collectives = collectives

    def session_config(self, cfg, profiling_options=None):
        """ConfigProto for CPU/GPU: TensorFlow's default thread pools, soft placement, GPU memory on demand.

        `profiling_options` is accepted for the common interface; on the host the trainer traces with the TF
        profiler instead.
        """
        config = v1.ConfigProto(allow_soft_placement=True)
        config.gpu_options.allow_growth = True
        if self.collectives is not None:
            self.collectives.configure(config)
        return config

    def loss_scale_kind(self, cfg):
        """The host follows --precision: auto means dynamic scaling for fp16 and none otherwise."""
        return cfg.loss_scale_kind()

    def build_train_loop(self, cfg, next_batch, loss_fn, global_step):
        """The FETCH_KEYS dict of base.py; running it executes cfg.iterations_per_loop steps.

        The optimizer and the loss scaler are created here, outside the loop, so their variables are ordinary
        graph variables.
        """
        optimizer = make_optimizer(cfg)
        scaler = LossScaler.from_config(cfg)
        steps = int(cfg.iterations_per_loop)
        first_step = global_step.read_value()

        reduce_gradients = self.mean_over_workers if self.collectives is not None else None

        def one_step(step):
            # Batch-norm moving averages created by this step's model run as part of this step's train op.
            loss, update_ops = with_new_update_ops(lambda: tf.cast(loss_fn(next_batch(), step), tf.float32))
            train_op, overflow = scaler.minimize(optimizer, loss, v1.trainable_variables(), global_step,
                                                 reduce_gradients=reduce_gradients)
            if self.collectives is not None:
                loss = self.mean_over_workers([loss])[0]  # the global batch's loss, the same on every worker
            return loss, overflow, tf.group(train_op, *update_ops)

        if steps == 1 and self.plain_single_step:
            loss, overflow, train_op = one_step(first_step)
            with tf.control_dependencies([train_op]):
                loss = tf.identity(loss)
                overflow = tf.identity(overflow)
            return self._with_sync(self._fetches(loss, loss, overflow, global_step, scaler))

        def body(i, loss_sum, last_loss, last_overflow):
            loss, overflow, train_op = one_step(first_step + tf.cast(i, tf.int64))
            with tf.control_dependencies([train_op]):
                return i + 1, loss_sum + loss, tf.identity(loss), tf.identity(overflow)

        _, loss_sum, loss, overflow = v1.while_loop(
            lambda i, *unused: i < steps, body,
            [tf.constant(0), tf.constant(0.0), tf.constant(0.0), tf.constant(False)],
            parallel_iterations=self.parallel_iterations, swap_memory=self.swap_memory,
            back_prop=False)
        return self._with_sync(self._fetches(loss, loss_sum / steps, overflow, global_step, scaler))

    def _with_sync(self, fetches):
        # Every variable exists now (model, optimizer slots, loss-scale state, global step): the broadcast covers
        # everything a checkpoint restores on the chief.
        self.build_variable_sync()
        return fetches

    @staticmethod
    def _fetches(loss, mean_loss, overflow, global_step, scaler):
        # Read the state only after the step(s): the control dependency orders the reads after the updates.
        with tf.control_dependencies([loss, mean_loss, overflow]):
            fetches = {"loss": tf.identity(loss), "mean_loss": tf.identity(mean_loss),
                       "global_step": global_step.read_value(), "overflow": tf.identity(overflow)}
            fetches.update(scaler.state())
        return fetches

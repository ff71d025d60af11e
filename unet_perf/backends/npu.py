"""Ascend NPU backend: TF 1.15 + CANN's npu_bridge, coded against ../shared/compat/npu_bridge_api.txt.

How one Session.run becomes K = iterations_per_loop steps on the NPU ("sink mode"):
- the session config registers the `NpuOptimizer` graph pass with `iterations_per_loop=K` and
  `enable_data_pre_proc=True` (the iterator's GetNext moves to the device);
- `prepare_session` wraps the train op with `util.set_iteration_per_loop`, which loads K-1 into the variable
  `npu_runconfig/iterations_per_loop` and returns `IterationOp`; the device then runs the WHOLE graph K times per
  Session.run and the fetched tensors hold the values of the last iteration. The device loops only on an op named
  exactly `IterationOp` (a second call, or one inside a name scope, gives `IterationOp_1`, which runs once while
  the host counts K), so it is created once per graph, outside any name scope, and its name is checked.
- the IterationOp is FETCHED (key base.ITERATION_OP_KEY of the prepared fetches): Grappler's dependency optimizer
  runs before the adapter's partition pass and removes a NoOp reached only through control edges unless it is a
  fetch, and without a node named `IterationOp` the device runs one step per Session.run. The callers check after
  every run that global_step moved by K (base.check_loop_steps), so a loop that did not happen is a loud error.

So the training step is built once (no while_loop), and everything that must happen every step (loss-scale
bookkeeping, counters, global step, batch-norm moving averages) is an op grouped with the train op. Differences
from the host backend:
- `loss_scale=auto` resolves against `precision_mode`, not `--precision`: see `npu_loss_scale_kind`.
- bf16 precision modes (and --precision bf16) are refused on chips without bfloat16 (Ascend 910; the chip name
  comes from pyACL's acl.get_soc_name(), see `soc_name`); unknown chips pass, and the GE log names the mode in effect.
- dynamic scaling is npu_bridge's ExponentialUpdateLossScaleManager, which keeps TF 1.15's contrib semantics:
  overflowing steps are counted since the last scale change (finite steps in between do not reset the count), the
  scale is halved when `decr_every_n_nan_or_inf=2` of them have been seen (the npu_bridge default and the
  ModelZoo U-Net's choice), both counters are reset only by a scale change, and at the top of float32 a due
  increase leaves the scale as it is. Ascend 910 runs in saturation mode, where the float-status check also fires
  on harmless saturations, and halving on every single one slides the scale toward 1 (a pitfall the
  Ascend migration guide describes).
  Every overflowing step is still skipped.
- overflow detection is the optimizer's: the device float status (tensor `overflow_status_reduce_all`) when the
  adapter names it, else `is_finite` over the gradients (INF/NaN-mode chips, adapters before 2021);
  `NpuBackend.overflow_source` says which one the `overflow`/`skipped_steps` fetches follow.
- gradients that are None (a trainable variable the loss does not reach) are dropped before the update, as the
  host backend does: there is nothing to apply, and the INF/NaN-mode check of the real optimizer fails on them.
- the global step advances on skipped steps too (we increment it ourselves instead of passing it to the
  optimizer, whose conditional apply would not advance it), so "steps = runs x K" holds as on the host.
- `mean_loss` is the mean since the last multiple of K, kept in a variable (`loss_sum`): with runs starting at
  multiples of K (checkpoints are), that is the mean over the K device iterations of one Session.run.

Several NPUs (`collectives` = backends.hccl.NpuCollectives, one process per device): the optimizer is wrapped in
npu_bridge's NPUDistributedOptimizer, which all-reduces (mean) the gradients inside `compute_gradients`, under
NPULossScaleOptimizer(..., is_distributed=True), which sums the float status over the ranks (every rank skips the
same overflowing step, the scale moves identically). The wrapper fits the loss-scaling path unchanged: the
loss-scale optimizer calls it with the scaled loss and unscales the averaged gradients. The reported loss is the
mean over ranks; `sync_variables` broadcasts rank 0's variables after init/restore; the session config adds
`hcom_parallel` and the HCCL timeout. Batch-norm statistics stay per rank. `precision_mode` and profiling are GE
start-up options, fixed by the first NPU session of the process (the HCCL start-up session), so `session_target`
opens that session with this run's full session config (`cfg`).

npu_bridge is imported lazily, so this module imports on machines without it.
"""
import inspect
import json
import os
import weakref


from unet_perf.backends.ascend import npu_optimizer_op
from unet_perf.backends.base import ITERATION_OP_KEY, Backend
from unet_perf.compat import npu_bridge_available, v1
from unet_perf.errors import UserError
from unet_perf.model.network import with_new_update_ops

# Tensor the NPU loss-scale optimizer names after reducing the float status: True = NO overflow.
OVERFLOW_STATUS_NAME = "overflow_status_reduce_all"
# The op name the device loop looks for (adapter's geop_npu.cc): nothing else makes Session.run loop K times.
ITERATION_OP_NAME = "IterationOp"
# Values of NpuBackend.overflow_source.
OVERFLOW_FROM_FLOAT_STATUS = "npu float status"
OVERFLOW_FROM_GRADIENTS = "is_finite over gradients"
OVERFLOW_NOT_CHECKED = "none (no loss scaling)"
# precision_mode values that never compute in float16, so loss scaling is not needed under loss_scale=auto.
_NO_FP16_MODES = ("force_fp32", "allow_mix_precision_bf16", "allow_fp32_to_bf16")
_BF16_MODES = ("allow_mix_precision_bf16", "allow_fp32_to_bf16")
# acl.get_soc_name() of the chips without bfloat16: Ascend 910 of the Atlas training series (910B and later have it).
NO_BF16_CHIPS = ("Ascend910", "Ascend910A", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA")


def profiling_options(output_dir, fp_point="", bp_point=""):
    """Ascend profiler options for `NpuBackend.session_config(cfg, profiling_options=...)`.

    Empty fp_point/bp_point let the profiler find the forward/backward boundaries itself.
    """
    return {
        "output": output_dir,
        "training_trace": "on",
        "task_trace": "on",
        "aicpu": "on",
        "fp_point": fp_point,
        "bp_point": bp_point,
        "aic_metrics": "PipeUtilization",
    }


def soc_name():
    """The chip's name as CANN reports it (pyACL `acl.get_soc_name()`, e.g. "Ascend910A", "Ascend910B1"), or None
    when pyACL does not import or says nothing (the bf16 check then passes and the device decides)."""
    try:
        import acl  # pyACL, installed with the CANN toolkit next to npu_bridge
        name = acl.get_soc_name()
    except Exception:  # no pyACL, or a pyACL without get_soc_name: the chip is unknown
        return None
    name = str(name or "").strip()
    return name or None


def check_chip_precision(cfg, chip):
    """UserError when cfg asks for bfloat16 (a bf16 precision_mode, or --precision bf16) on a chip without it."""
    wants_bf16 = cfg.precision_mode in _BF16_MODES or cfg.precision == "bf16"
    if chip in NO_BF16_CHIPS and wants_bf16:
        asked = ("--precision bf16" if cfg.precision == "bf16" else "--precision_mode {}".format(cfg.precision_mode))
        raise UserError("{} needs bfloat16, which this {} (Ascend 910) does not have; use --precision_mode "
                        "allow_mix_precision (float16, loss-scaled) or force_fp32, and --precision fp32".format(
                            asked, chip))


def npu_loss_scale_kind(cfg):
    """('none'|'dynamic'|'fixed', value) for the NPU.

    `--loss_scale auto` follows precision_mode: modes that may compute in float16 (allow_mix_precision,
    allow_fp32_to_fp16, force_fp16, and must_keep_origin_dtype on a float16 graph) need loss scaling, so auto
    means dynamic there; float32/bfloat16 modes mean none. Explicit values pass through.
    """
    if cfg.loss_scale.strip().lower() != "auto":
        return cfg.loss_scale_kind()
    if cfg.precision_mode in _NO_FP16_MODES:
        return "none", None
    if cfg.precision_mode == "must_keep_origin_dtype" and cfg.precision != "fp16":
        return "none", None
    return "dynamic", None


class NpuBackend(Backend):
    """Backend for Ascend NPUs through npu_bridge; see the module docstring."""

    name = "npu"
    sync_doing = "sharing rank 0's variables"

    def __init__(self, decr_every_n_nan_or_inf=2, collectives=None, cfg=None, chip=soc_name):
        if not npu_bridge_available():
            raise UserError("--device npu needs CANN's npu_bridge (the TF 1.15 Ascend stack), which does not "
                            "import here; use --device host")
        rank_size = os.environ.get("RANK_SIZE", "1").strip() or "1"
        # The adapter's distributed optimizer decides from RANK_SIZE itself, so it must agree with the cluster.
        expected = str(collectives.cluster.size) if collectives is not None else "1"
        if rank_size != expected:
            if collectives is None:
                raise UserError("RANK_SIZE={} but no RANK_TABLE_FILE: set RANK_TABLE_FILE, RANK_ID and JOB_ID for "
                                "several NPUs (tools/train_full_8p.sh does), or RANK_SIZE=1".format(rank_size))
            raise UserError("RANK_SIZE={} but the rank table has {} ranks; set RANK_SIZE={}".format(
                rank_size, expected, expected))
        self.collectives = collectives
        # Several NPUs: the run's config, whose session config the start-up session (initialize_system) must carry.
        self.startup_cfg = cfg
        self._chip = chip  # function -> the chip name or None (soc_name); asked once, when first needed
        self.decr_every_n_nan_or_inf = decr_every_n_nan_or_inf
        # Where the `overflow` fetch comes from (one of the OVERFLOW_* strings); set by build_train_loop.
        self.overflow_source = None
        self._train_op = None
        self._iterations_per_loop = None
        self._session_iterations_per_loop = None
        self._iteration = None  # (graph, weak reference to the session, IterationOp) of the last K > 1 prepare

    def loss_scale_kind(self, cfg):
        """('none'|'dynamic'|'fixed', value) this backend uses for cfg: see `npu_loss_scale_kind`."""
        return npu_loss_scale_kind(cfg)

    def keep_fp32_scope(self):
        """The adapter's keep_dtype_scope: ops built inside keep float32 under precision_mode allow_mix_precision,
        which would otherwise let the device run the softmax and the loss in float16 (it marks ops with the
        `_keep_dtype` attribute the graph pass reads)."""
        from npu_bridge.estimator.npu.npu_scope import keep_dtype_scope
        return keep_dtype_scope()

    def chip(self):
        """The chip name (see soc_name), or None when unknown."""
        if callable(self._chip):
            self._chip = self._chip()
        return self._chip

    def session_target(self):
        """The session target, "" (the device is in-process). Several NPUs: HCCL is initialised first, in a session
        with this run's full session config (its precision_mode and profiling become the process's GE options)."""
        if self.collectives is None:
            return ""
        return self.collectives.start(self.session_config(self.startup_cfg) if self.startup_cfg is not None else None)

    def session_config(self, cfg, profiling_options=None):
        """ConfigProto with the NpuOptimizer pass; `profiling_options` is a dict from `profiling_options()`."""
        check_chip_precision(cfg, self.chip())
        config = v1.ConfigProto()
        params = npu_optimizer_op(config).parameter_map
        params["enable_data_pre_proc"].b = True  # GetNext offload: the prerequisite of sink mode
        params["iterations_per_loop"].i = cfg.iterations_per_loop
        params["precision_mode"].s = v1.compat.as_bytes(cfg.precision_mode)
        if profiling_options:
            params["profiling_mode"].b = True
            params["profiling_options"].s = v1.compat.as_bytes(json.dumps(profiling_options, sort_keys=True))
        if self.collectives is not None:
            self.collectives.configure(config)  # hcom_parallel, HCCL and session timeouts
        self._session_iterations_per_loop = cfg.iterations_per_loop
        return config

    def build_train_loop(self, cfg, next_batch, loss_fn, global_step):
        """One training step's graph; the device repeats it K times per Session.run. Returns the FETCH_KEYS dict.

        Every fetch carries a control dependency on the step, so running any of them trains.
        """
        k = cfg.iterations_per_loop  # a multiple of every step count: Config.validate, via assembly.build
        check_chip_precision(cfg, self.chip())
        kind, fixed_value = npu_loss_scale_kind(cfg)
        # Built before any control_dependencies block (the manager's variables must not inherit one).
        manager = self._loss_scale_manager(cfg, kind, fixed_value)
        optimizer = _make_optimizer(cfg)
        distributed = self.collectives is not None
        if distributed:
            # Averages the (scaled) gradients with an HCCL all-reduce inside compute_gradients: part of the step,
            # so the device loop runs it on every iteration. The ModelZoo U-Net's chain: optimizer ->
            # NPUDistributedOptimizer -> NPULossScaleOptimizer.
            from npu_bridge.estimator.npu.npu_optimizer import NPUDistributedOptimizer
            optimizer = NPUDistributedOptimizer(optimizer)
        if manager is not None:
            from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer
            # is_distributed: the float status is summed over the ranks, so every rank skips the same steps.
            optimizer = NPULossScaleOptimizer(optimizer, manager, is_distributed=distributed)
        initial_scale = {"dynamic": cfg.loss_scale_init, "fixed": fixed_value}.get(kind, 1.0)
        state = _train_state(initial_scale)

        step = global_step.read_value()
        # Batch-norm moving averages created by this step's model: run every device iteration with the update.
        loss, update_ops = with_new_update_ops(lambda: loss_fn(next_batch(), step))
        # The reported loss is the global batch's (the mean over ranks), the same on every rank.
        reported_loss = self.mean_over_workers([loss])[0]
        position = v1.math.floormod(step, k)  # index of this step inside the device loop
        loss_sum = v1.where(v1.math.equal(position, 0), reported_loss,
                            state["loss_sum"].read_value() + reported_loss)
        mean_loss = loss_sum / v1.cast(position + 1, v1.float32)

        graph = v1.get_default_graph()
        first_new_op = len(graph.get_operations())
        grads_and_vars = _present_gradients(optimizer.compute_gradients(loss))
        apply_op = optimizer.apply_gradients(grads_and_vars)  # no global_step: advanced below, also when skipped
        overflow, self.overflow_source = _overflow_flag(graph.get_operations()[first_new_op:], grads_and_vars,
                                                        manager)

        # Values of this step first, then every update grouped into one op the device loop runs each iteration.
        with v1.control_dependencies([apply_op, mean_loss, overflow]):
            scale = _read(manager.get_loss_scale()) if manager is not None else v1.constant(1.0)
            scale = v1.cast(scale, v1.float32)
            previous_scale = state["last_loss_scale"].read_value()
        changed = v1.math.not_equal(scale, previous_scale)
        with v1.control_dependencies([changed]):
            updates = [
                v1.assign(state["last_loss_scale"], scale),
                v1.assign_add(state["scale_changes"], v1.cast(changed, v1.int64)),
                v1.assign_add(state["skipped_steps"], v1.cast(overflow, v1.int64)),
                v1.assign(state["loss_sum"], loss_sum),
                v1.assign_add(global_step, 1),
            ]
        train_op = v1.group(*(updates + update_ops), name="npu_train_step")
        self._train_op = train_op
        self._iterations_per_loop = k

        self.build_variable_sync()  # every variable exists now

        with v1.control_dependencies([train_op]):
            return {
                "loss": v1.identity(reported_loss),
                "mean_loss": v1.identity(mean_loss),
                "global_step": global_step.read_value(),
                "loss_scale": v1.identity(scale),
                "overflow": v1.identity(overflow),
                "skipped_steps": state["skipped_steps"].read_value(),
                "scale_changes": state["scale_changes"].read_value(),
            }

    def prepare_session(self, sess, fetches):
        """For K > 1: `util.set_iteration_per_loop` after variables are initialised/restored.

        It adds variables and ops, so the graph must not be finalized the first time. The IterationOp is created
        once per graph: calling this again with the same session reuses it. Returns `fetches` plus the IterationOp
        under base.ITERATION_OP_KEY: only a fetched IterationOp is sure to survive Grappler and reach the device.
        """
        if self._train_op is None or self._train_op.graph is not sess.graph:
            raise ValueError("prepare_session: call build_train_loop in this session's graph first")
        k = self._iterations_per_loop
        if self._session_iterations_per_loop not in (None, k):
            raise ValueError("the session was configured for iterations_per_loop={} but the train loop for {}"
                             .format(self._session_iterations_per_loop, k))
        if k == 1:
            return fetches
        return dict(fetches, **{ITERATION_OP_KEY: self._iteration_op(sess, k)})

    def _iteration_op(self, sess, k):
        if self._iteration is not None and self._iteration[0] is sess.graph:
            _, prepared_sess, iteration_op = self._iteration
            if prepared_sess() is not sess:
                # The loop variables are loaded per session, and a second IterationOp would not be looped on.
                raise ValueError("prepare_session: this training graph was prepared for another session; build "
                                 "the graph again for a new session")
            return iteration_op
        from npu_bridge.estimator.npu import util
        graph = sess.graph
        with graph.as_default(), graph.name_scope(None):  # a caller's name scope would rename the op
            iteration_op = util.set_iteration_per_loop(sess, self._train_op, k)
        if iteration_op.name != ITERATION_OP_NAME:
            raise ValueError("util.set_iteration_per_loop returned {!r}, but the device loops only on an op named "
                             "exactly {!r} (the graph already has one): call set_iteration_per_loop once per "
                             "graph".format(iteration_op.name, ITERATION_OP_NAME))
        self._iteration = (graph, weakref.ref(sess), iteration_op)
        return iteration_op

    def _loss_scale_manager(self, cfg, kind, fixed_value):
        if kind == "dynamic":
            from npu_bridge.estimator.npu.npu_loss_scale_manager import ExponentialUpdateLossScaleManager
            return ExponentialUpdateLossScaleManager(
                init_loss_scale=cfg.loss_scale_init,
                incr_every_n_steps=cfg.loss_scale_growth_interval,
                decr_every_n_nan_or_inf=self.decr_every_n_nan_or_inf,
                incr_ratio=2,
                decr_ratio=0.5)
        if kind == "fixed":
            from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager
            # The overflow check makes the optimizer skip non-finite updates, as on the host. Adapters before
            # mid-2021 lack the parameter and always check.
            if _accepts_parameter(FixedLossScaleManager, "enable_overflow_check"):
                return FixedLossScaleManager(fixed_value, enable_overflow_check=True)
            return FixedLossScaleManager(fixed_value)
        return None


def _make_optimizer(cfg):
    from unet_perf.model.optim import make_optimizer  # shared with the host backend
    return make_optimizer(cfg)


def _train_state(initial_scale):
    """Non-trainable variables updated every device iteration; saved with the checkpoint."""
    with v1.variable_scope("npu_train_state", reuse=v1.AUTO_REUSE):
        def counter(name):
            return v1.get_variable(name, shape=[], dtype=v1.int64, initializer=v1.zeros_initializer(),
                                   trainable=False)
        return {
            "skipped_steps": counter("skipped_steps"),
            "scale_changes": counter("scale_changes"),
            # The scale seen after the previous step: a change of the manager's scale counts as one event.
            "last_loss_scale": v1.get_variable("last_loss_scale", shape=[], dtype=v1.float32,
                                               initializer=v1.constant_initializer(initial_scale),
                                               trainable=False),
            "loss_sum": v1.get_variable("loss_sum", shape=[], dtype=v1.float32,
                                        initializer=v1.zeros_initializer(), trainable=False),
        }


def _read(value):
    """A read ordered by the enclosing control dependencies (a ref variable's implicit snapshot is not)."""
    if hasattr(value, "read_value"):
        return value.read_value()
    return v1.identity(value)


def _accepts_parameter(callable_, name):
    """Whether `callable_` (a class or function) has a parameter called `name`; False when it cannot be inspected."""
    try:
        return name in inspect.signature(callable_).parameters
    except (TypeError, ValueError):
        return False


def _present_gradients(grads_and_vars):
    """The (gradient, variable) pairs with a gradient; a ValueError when the loss reaches no variable."""
    present = [(grad, var) for grad, var in grads_and_vars if grad is not None]
    if not present:
        raise ValueError("the loss depends on no trainable variable: every gradient is None")
    return present


def _overflow_flag(new_ops, grads_and_vars, manager):
    """(bool tensor: this step overflowed and its update was skipped, the OVERFLOW_* string of its source).

    Prefers the NPU optimizer's own float-status result (it sees saturations that leave the numbers finite);
    when absent (INF/NaN mode falls back to TF's check; adapters before 2021 do not name it) derives it from the
    gradients the same way the INF/NaN fallback does.
    """
    if manager is None:
        return v1.constant(False), OVERFLOW_NOT_CHECKED  # nothing is skipped without a loss-scale optimizer
    for op in new_ops:
        if op.name.rsplit("/", 1)[-1].startswith(OVERFLOW_STATUS_NAME):
            return v1.math.logical_not(op.outputs[0]), OVERFLOW_FROM_FLOAT_STATUS
    finite = [v1.math.reduce_all(v1.math.is_finite(grad)) for grad, _ in grads_and_vars]
    return v1.math.logical_not(v1.math.reduce_all(v1.stack(finite))), OVERFLOW_FROM_GRADIENTS

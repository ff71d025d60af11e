"""The one place that assembles training: config + data source + backend -> graph, session, fetches.

    training = assembly.build(cfg, assembly.pipeline_source(cfg, data))       # or assembly.cached_batch_source(cfg)
    sess, fetches = assembly.open_session(training, cfg, restore=...)      # initialised, restored, prepared
    values = sess.run(fetches)                                          # K steps; keys: backends.base.FETCH_KEYS
    step = check_loop_steps(step, values, K)                            # backends.base: the loop really ran K

The trainer, the benchmarks and the profiler all call these two functions, so the session ordering the NPU needs
(variables, then restore, then the iterator initializer on its own, then `backend.prepare_session`) lives here once.
"""
import contextlib

import numpy as np

from unet_perf.compat import v1
from unet_perf.errors import UserError


class Training(object):
    """Handles of one assembled training graph.

    Attributes:
        graph: the tf.Graph holding everything below.
        backend: the backends.base.Backend that built the loop (owns what its settings mean).
        fetches: dict of FETCH_KEYS tensors; running it executes cfg.iterations_per_loop steps.
        iterator: the initializable iterator feeding the loop.
        global_step: the int64 global step variable.
        variables: every global variable (what checkpoints save and restore).
        init_ops: variable initialisers (global and local).
        extras: what `build(..., extras=fn)` returned (e.g. inference graphs sharing the weights), or None.
    """

    def __init__(self, graph, backend, fetches, iterator, global_step, variables, init_ops, extras=None):
        self.graph = graph
        self.backend = backend
        self.fetches = fetches
        self.iterator = iterator
        self.global_step = global_step
        self.variables = variables
        self.init_ops = init_ops
        self.extras = extras


def make_loss_fn(cfg, with_weights, backend=None, class_weights=None):
    """loss_fn(batch, step) for the backend: U-Net logits -> the configured loss (float32).

    batch is (images, masks) or (images, masks, weights); step seeds the stateless dropout. With a backend of
    several workers the batch is this worker's share: dropout masks are the global batch's rows and the weighted
    cross-entropy is normalised by the global batch's weight sum (see losses.py; for C >= 2 always, as unlabelled
    pixels differ by share). class_weights: a list of C floats, or None for cfg.class_weights (see
    resolve_class_weights). For C >= 2 the softmax and the loss are built in backend.keep_fp32_scope(). The loss
    passes through faults.nan_loss, a test hook that is the identity unless UNET_PERF_FAULTS arms it.
    """
    from unet_perf import faults
    from unet_perf.model import losses, network

    share = backend.cluster if backend is not None else None
    rank, size = (share.rank, share.size) if share is not None else (0, 1)
    class_weights = resolve_class_weights(cfg, class_weights)
    multiclass = cfg.num_classes > 1

    def loss_fn(batch, step):
        logits = network.unet(batch[0], cfg, training=True, step=step, worker_index=rank, num_workers=size)
        weights = batch[2] if with_weights else None
        weight_total = None
        if size > 1 and (weights is not None or multiclass):
            weight_total = backend.mean_over_workers(
                [losses.weight_sum(batch[1], cfg.num_classes, weights, class_weights)])[0]
        scope = backend.keep_fp32_scope() if multiclass and backend is not None else contextlib.nullcontext()
        with scope:  # the logits-to-loss part only: the network and the all-reduce keep the backend's precision
            loss = losses.compute_loss(logits, batch[1], weights, cfg.loss, weight_total=weight_total,
                                       class_weights=class_weights, dice_background=cfg.dice_background)
        return faults.nan_loss(loss, step)

    return loss_fn


def resolve_class_weights(cfg, class_weights=None):
    """The per-class loss weights to train with: class_weights (a list of C floats) when given, else cfg's explicit
    --class_weights list, else None (all 1). 'auto' must be resolved by the caller from the training set and
    passed in: a ValueError otherwise."""
    from unet_perf.data.classes import class_weight_values

    if class_weights is None:
        class_weights = class_weight_values(cfg.class_weights, cfg.num_classes)
        if class_weights == "auto":
            raise ValueError("--class_weights auto: compute the weights from the training set and pass them as "
                             "class_weights")
    if class_weights is None:
        return None
    class_weights = [float(value) for value in class_weights]
    if len(class_weights) != cfg.num_classes or cfg.num_classes == 1:
        raise ValueError("class_weights: {} value(s) for --num_classes {}".format(len(class_weights),
                                                                                 cfg.num_classes))
    return class_weights


# --- data sources: functions building a tf.data.Dataset inside the training graph ------------------------------

def pipeline_source(cfg, train, weights=None, start_step=0, worker_index=0, num_workers=1):
    """The real input pipeline over loaded slices (train: data.sources.Pairs; weights: float32 maps or None).

    start_step: the global step training resumes at; the stream continues where it stopped.
    worker_index, num_workers: this worker's share of each global batch (pipeline.make_dataset).
    """
    from unet_perf.input import pipeline

    if bool(cfg.weight_map) != (weights is not None):
        raise ValueError("pipeline_source: weights must be given exactly when cfg.weight_map is on")

    def source():
        return pipeline.make_dataset(train.images, train.masks, weights, cfg, seed=cfg.seed, start_batch=start_step,
                                     worker_index=worker_index, num_workers=num_workers)
    return source


def cached_batch_source(cfg, seed=None):
    """One random batch shaped like the pipeline's, repeated: training speed without any input cost.

    Images are uniform in [0, 1) in the compute dtype; masks are 80% ones (C = 1) or uniform random class ids
    0..C-1 (C >= 2), float32 [B, h, w, 1] either way; weights (when cfg.weight_map) are ones.
    """
    import tensorflow as tf

    from unet_perf.model.precision import compute_dtype

    shape = [cfg.batch_size, cfg.crop_size, cfg.crop_size, 1]
    rng = np.random.RandomState(cfg.seed if seed is None else seed)
    images = rng.uniform(0, 1, shape).astype(np.float32)
    if cfg.num_classes == 1:
        masks = (rng.uniform(0, 1, shape) > 0.2).astype(np.float32)
    else:
        masks = rng.randint(0, cfg.num_classes, shape).astype(np.float32)

    def source():
        batch = (tf.cast(tf.constant(images), compute_dtype(cfg.precision)), tf.constant(masks))
        if cfg.weight_map:
            batch = batch + (tf.ones(shape, tf.float32),)
        return tf.data.Dataset.from_tensors(batch).repeat()
    return source


def dataset_source(cfg, kind="pipeline"):
    """A source by name: "pipeline" (cfg's data loaded with data.loading.load_dataset, then the real input
    pipeline) or "cached_batch" (see cached_batch_source). For benchmarks and tools that take the kind as a flag."""
    if kind == "cached_batch":
        return cached_batch_source(cfg)
    if kind == "pipeline":
        from unet_perf.data.loading import load_dataset
        train, _, weights = load_dataset(cfg)
        return pipeline_source(cfg, train, weights)
    raise ValueError("source kind must be pipeline or cached_batch, got {!r}".format(kind))


# --- assembly ----------------------------------------------------------------------------------------------------

def build(cfg, source, backend=None, extras=None, class_weights=None):
    """Assemble cfg's K-step training loop fed by `source` in a new tf.Graph.

    Args:
        cfg: a config.Config; validated here (a Config built in code gets the CLI's checks, e.g. every step
            count a multiple of --iterations_per_loop).
        source: a function returning the training tf.data.Dataset (see pipeline_source, cached_batch_source);
            called inside the new graph.
        backend: a backends.base.Backend; default backends.get_backend(cfg).
        extras: optional function called inside the graph after the training loop (so it can reuse the model's
            variables, e.g. inference graphs); its result is Training.extras.
        class_weights: the per-class loss weights (a list of C floats) when the caller resolved
            --class_weights auto; None: cfg's explicit list or none (see resolve_class_weights).
    Returns:
        a Training.
    """
    from unet_perf.input import pipeline
    from unet_perf.backends import get_backend

    cfg.validate()
    backend = backend if backend is not None else get_backend(cfg)
    graph = v1.Graph()
    with graph.as_default(), v1.device(backend.device()):
        v1.set_random_seed(cfg.seed)
        global_step = v1.train.get_or_create_global_step()
        iterator = pipeline.make_iterator(source())
        loss_fn = make_loss_fn(cfg, cfg.weight_map, backend, class_weights)
        fetches = backend.build_train_loop(cfg, iterator.get_next, loss_fn, global_step)
        built_extras = extras() if extras is not None else None
        variables = v1.global_variables()
        init_ops = [v1.global_variables_initializer(), v1.local_variables_initializer()]
    return Training(graph, backend, fetches, iterator, global_step, variables, init_ops, built_extras)


def open_session(training, cfg, restore=None, profiling_options=None):
    """A session of `training`, ready to run: (session, fetches).

    Order (the NPU needs it; harmless elsewhere): initialise variables; `restore(sess)` when given (restore a
    checkpoint, recover writers); `backend.sync_variables` (several workers: everyone takes the chief's values,
    so only the chief needs the checkpoint); run the iterator initializer on its own; `backend.prepare_session`
    (the NPU adds its IterationOp to the fetches, so every caller fetches it). The session is closed again if any
    of this fails. After each run of the fetches, check that it trained K steps: backends.base.check_loop_steps, or
    CheckedRuns below.
    """
    backend = training.backend
    config = backend.session_config(cfg, profiling_options=profiling_options)
    sess = v1.Session(backend.session_target(), graph=training.graph, config=config)
    try:
        sess.run(training.init_ops)
        if restore is not None:
            restore(sess)
        backend.sync_variables(sess)
        sess.run(training.iterator.initializer)
        fetches = backend.prepare_session(sess, training.fetches)
    except BaseException:
        sess.close()
        raise
    return sess, fetches


class CheckedRuns(object):
    """Training Session.runs of open_session's fetches, each checked to have moved global_step by exactly K
    (backends.base.check_loop_steps): for callers that time or profile runs rather than count steps."""

    def __init__(self, sess, fetches, iterations_per_loop, start_step=0):
        self.sess, self.fetches, self.iterations_per_loop = sess, fetches, iterations_per_loop
        self.step = start_step  # global_step before the next run (a new graph starts at 0)

    def run(self, options=None, run_metadata=None):
        """One Session.run of the fetches (K steps): the fetched values."""
        from unet_perf.backends.base import check_loop_steps
        values = self.sess.run(self.fetches, options=options, run_metadata=run_metadata)
        self.step = check_loop_steps(self.step, values, self.iterations_per_loop)
        return values


def steps_to_runs(steps, iterations_per_loop):
    """Session.run calls needed for at least `steps` training steps (at least one)."""
    if iterations_per_loop <= 0:
        raise UserError("--iterations_per_loop must be positive, got {}".format(iterations_per_loop))
    return max(1, -(-int(steps) // int(iterations_per_loop)))

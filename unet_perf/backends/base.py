"""The contract between the trainer and a backend (host CPU/GPU, or Ascend NPU).

A backend turns "a function that builds one training step's loss from one batch" into fetches that run
K = iterations_per_loop steps per Session.run:

    backend = get_backend(cfg)                       # unet_perf.backends.get_backend
    config_proto = backend.session_config(cfg)       # tf.compat.v1.ConfigProto
    fetches = backend.build_train_loop(cfg, next_batch, loss_fn, global_step)
    sess = tf.compat.v1.Session(config=config_proto)
    ... initialise / restore variables, then run iterator.initializer on its own (NPU pitfall) ...
    fetches = backend.prepare_session(sess, fetches)  # NPU: util.set_iteration_per_loop; host: unchanged
    values = sess.run(fetches)                        # K steps; global_step advanced by K

Arguments:
    next_batch()            -> the tuple from iterator.get_next(): (image, mask) or (image, mask, weight),
                               static shapes [B, h, w, 1]. Called inside the step (inside the loop body on host).
    loss_fn(batch, step)    -> scalar float32 loss; builds the model under a reusing variable scope.
                               `step` is the int64 global step of this step (seeds stateless dropout so a K-step
                               loop and K single steps see the same randomness).
    global_step             -> the int64 variable from tf.compat.v1.train.get_or_create_global_step().

Fetch keys every backend returns (scalar tensors; values after the K steps of one Session.run):
    FETCH_KEYS below.
"""

FETCH_KEYS = (
    "loss",           # float32, loss of the last step of the loop
    "mean_loss",      # float32, mean loss over the K steps (NPU: the last step's loss, see npu.py)
    "global_step",    # int64, after the loop
    "loss_scale",     # float32, current loss scale (1.0 when no loss scaling)
    "overflow",       # bool, the last step had a non-finite gradient (update skipped)
    "skipped_steps",  # int64, total steps skipped for non-finite gradients since training began
    "scale_changes",  # int64, total loss-scale changes (up or down) since training began
)


class Backend(object):
    """Interface; see the module docstring."""

    name = "abstract"

    def session_config(self, cfg, profiling_options=None):
        raise NotImplementedError

    def build_train_loop(self, cfg, next_batch, loss_fn, global_step):
        raise NotImplementedError

    def prepare_session(self, sess, fetches):
        return fetches

"""The stand-in's GE plugin (not part of the real npu_bridge): start-up options fixed once per process.

The real adapter reads precision_mode and the profiling options as GE start-up options (tf_adapter/util/npu_attrs.cc)
and `GePlugin::Init` (util/ge_plugin.cc) takes them from the first session that initialises the plugin, i.e. the
first Session.run of a session whose config carries the NpuOptimizer pass (the initialize_system session in
multi-device runs); later sessions' values are ignored. The stand-in records the same: `effective()` is what GE
runs with ({} before any NPU session ran; an option the first session lacked is None, the chip default), and
`ignored()` lists later sessions' differing values. State lives on the Session class, so it survives the tests'
re-imports of npu_bridge; `reset()` forgets it (a new process).
"""
import tensorflow as tf

STARTUP_OPTIONS = ("precision_mode", "profiling_mode", "profiling_options")
_STATE = "_npu_stub_ge_plugin"


def _session_class():
    return tf.compat.v1.Session


def _state():
    return vars(_session_class())[_STATE]


def startup_options(config):
    """STARTUP_OPTIONS of an NpuOptimizer ConfigProto (None for an absent one); None when not an NPU config."""
    if config is None:
        return None
    for custom_op in config.graph_options.rewrite_options.custom_optimizers:
        if custom_op.name == "NpuOptimizer":
            params = custom_op.parameter_map
            return {
                "precision_mode": params["precision_mode"].s.decode() if "precision_mode" in params else None,
                "profiling_mode": params["profiling_mode"].b if "profiling_mode" in params else None,
                "profiling_options": (params["profiling_options"].s.decode() if "profiling_options" in params
                                      else None),
            }
    return None


def install():
    """Wrap Session.__init__ (remember the NPU start-up options) and Session.run (the first NPU run fixes them)."""
    session_class = _session_class()
    if _STATE in vars(session_class):
        return
    original_init, original_run = session_class.__init__, session_class.run

    def init(self, target="", graph=None, config=None):
        self._npu_stub_startup_options = startup_options(config)
        original_init(self, target, graph, config)

    def run(self, *args, **kwargs):
        options = getattr(self, "_npu_stub_startup_options", None)
        if options is not None:
            state = _state()
            if state["effective"] is None:
                state["effective"] = dict(options)
            elif options != state["effective"]:
                state["ignored"].append(dict(options))
            self._npu_stub_startup_options = None  # decided once per session
        return original_run(self, *args, **kwargs)

    session_class.__init__ = init
    session_class.run = run
    setattr(session_class, _STATE, {"effective": None, "ignored": []})


def effective():
    """The start-up options GE runs with in this process ({} before the first NPU session ran)."""
    return dict(_state()["effective"] or {})


def ignored():
    """Start-up options of later NPU sessions that differed from the effective ones (ignored, as on the device)."""
    return list(_state()["ignored"])


def reset():
    """Forget the options (as in a new process)."""
    _state().update(effective=None, ignored=[])

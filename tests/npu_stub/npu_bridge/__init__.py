"""Test stand-in for CANN's npu_bridge (never installed; tests put tests/npu_stub on sys.path).

Only the modules and names unet_perf uses, with the signatures of ../shared/compat/npu_bridge_api.txt. Calls are
recorded in `npu_bridge.stub_log.CALLS`. Behaviour follows the device where unet_perf depends on it, in TF graph
mode on the CPU: a Session.run that fetches `IterationOp` executes the graph K times (util.py), the first NPU
session of the process fixes the GE start-up options precision_mode and profiling (ge_plugin.py), the dynamic
loss-scale manager has TF 1.15's semantics (npu_loss_scale_manager.py), overflow detection is at least as strict as
the real optimizer's (npu_loss_scale_optimizer.py), and HCCL (hccl/hccl_ops.py, which refuses the 64-bit dtypes
older adapters refuse; the rank queries of ../hccl; the distributed optimizers of estimator/npu/npu_optimizer.py)
really exchanges data between rank processes over 127.0.0.1 when the test-only NPU_STUB_HCCL_ADDRESSES is set
(hccl/loopback.py). No NPU speed, and no float16 range under mixed precision, is simulated.
"""
from npu_bridge import ge_plugin as _ge_plugin

_ge_plugin.install()  # the real plugin is part of the adapter library that importing npu_bridge loads

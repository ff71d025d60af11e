"""Test stand-in for CANN's npu_bridge (never installed; tests put tests/npu_stub on sys.path).

Only the modules and names unet_perf uses, with the signatures of ../shared/compat/npu_bridge_api.txt. Calls are
recorded in `npu_bridge.stub_log.CALLS`. Behaviour is minimal but real in TF graph mode; no NPU speed is simulated.
"""

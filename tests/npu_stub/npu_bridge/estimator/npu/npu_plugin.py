"""Stand-in for npu_bridge.estimator.npu.npu_plugin: the device's overflow mode."""

# True = INF/NaN mode (A2/A3 default): the loss-scale optimizer falls back to TF's finiteness check and creates no
# overflow_status_reduce_all tensor. False = saturation mode (Ascend 910). Tests flip it.
INF_NAN_MODE = False


def is_inf_nan_enabled():
    return INF_NAN_MODE


def set_device_sat_mode(mode):
    global INF_NAN_MODE
    INF_NAN_MODE = mode == 1

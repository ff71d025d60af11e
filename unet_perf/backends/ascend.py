"""What the Ascend backend (npu.py) and its HCCL engine (hccl.py) share: the adapter's graph pass in a session
config."""
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig  # same path in TF 1.15 and 2.x


def npu_optimizer_op(config):
    """The "NpuOptimizer" custom optimizer entry of a ConfigProto, added (with the settings every NPU session
    needs) when missing."""
    rewrite_options = config.graph_options.rewrite_options
    custom_op = None
    for candidate in rewrite_options.custom_optimizers:
        if candidate.name == "NpuOptimizer":
            custom_op = candidate
    if custom_op is None:
        custom_op = rewrite_options.custom_optimizers.add()
        custom_op.name = "NpuOptimizer"
        custom_op.parameter_map["use_off_line"].b = True
        # The migration guide turns these two grappler passes off for the NPU and keeps the others.
        rewrite_options.remapping = RewriterConfig.OFF
        rewrite_options.memory_optimization = RewriterConfig.OFF
    return custom_op

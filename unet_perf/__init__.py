"""unet_perf: graph-mode U-Net training for TensorFlow 1.15 (+ npu_bridge) and TensorFlow 2.x."""

__version__ = "0.1.0"

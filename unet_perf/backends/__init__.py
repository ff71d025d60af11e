"""Backends: `host` (CPU/GPU, in-graph K-step loop) and `npu` (Ascend npu_bridge). See base.py."""

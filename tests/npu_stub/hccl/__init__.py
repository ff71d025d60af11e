"""Stand-in for CANN's hccl Python package (rank queries); see npu_bridge/hccl/loopback.py."""

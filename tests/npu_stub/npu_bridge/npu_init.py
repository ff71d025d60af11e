"""Stand-in for npu_bridge.npu_init: only the re-exports unet_perf uses (the real module re-exports far more)."""
from hccl.manage.api import get_local_rank_id  # noqa: F401
from hccl.manage.api import get_local_rank_size  # noqa: F401
from hccl.manage.api import get_rank_id  # noqa: F401
from hccl.manage.api import get_rank_size  # noqa: F401
from npu_bridge.estimator import npu_ops  # noqa: F401
from npu_bridge.estimator.npu.npu_optimizer import NPUDistributedOptimizer  # noqa: F401
from npu_bridge.estimator.npu.npu_optimizer import npu_allreduce  # noqa: F401
from npu_bridge.estimator.npu.npu_optimizer import npu_distributed_optimizer_wrapper  # noqa: F401
from npu_bridge.hccl import hccl_ops  # noqa: F401

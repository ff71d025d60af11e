"""Backends: `host` (CPU/GPU, in-graph K-step loop) and `npu` (Ascend npu_bridge). See base.py."""
from unet_perf import compat
from unet_perf.errors import UserError


def get_backend(cfg, cluster=None):
    """The backend for cfg.device: "host", "npu", or "auto" (npu when npu_bridge imports, else host).

    cluster: this process's cluster.Cluster (default: one worker). With several workers the host backend trains
    data-parallel over TensorFlow's collective ops (backends/collective.py), the NPU backend over HCCL
    (backends/hccl.py).
    """
    device = cfg.device
    if device == "auto":
        device = "npu" if compat.npu_bridge_available() else "host"
    if device == "host":
        from unet_perf.backends.host import HostBackend
        collectives = None
        if cluster is not None and cluster.distributed:
            from unet_perf.backends.collective import HostCollectives
            collectives = HostCollectives(cluster, cfg.collective_timeout)
        return HostBackend(collectives=collectives)
    if device == "npu":
        if not compat.npu_bridge_available():
            raise UserError("--device npu needs CANN's npu_bridge, which does not import here; use --device host")
        from unet_perf.backends.npu import NpuBackend  # imported lazily: it imports npu_bridge
        if cluster is not None and cluster.distributed:
            from unet_perf.backends.hccl import NpuCollectives
            return NpuBackend(collectives=NpuCollectives(cluster, cfg.collective_timeout), cfg=cfg)
        return NpuBackend()
    raise UserError("--device must be auto, host or npu, got {!r}".format(cfg.device))

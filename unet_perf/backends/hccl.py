"""HCCL through npu_bridge: the Ascend engine for several ranks, a base.Collectives like collective.HostCollectives.

One process per device, as the ModelZoo 8p scripts run them: RANK_TABLE_FILE, RANK_SIZE, RANK_ID (global; on
several servers rank = server_index * devices_per_server + i), ASCEND_DEVICE_ID (the logical device this process
uses; DEVICE_ID when it is unset) and JOB_ID (the adapter's allreduce reads the rank count through it) come from the
environment. The rank table lists PHYSICAL device ids: it is checked against DEVICE_ID when set, else against
ASCEND_DEVICE_ID mapped through ASCEND_RT_VISIBLE_DEVICES (logical = physical without it). There is no server to
start and no device scope: a session whose config carries the NpuOptimizer pass runs on the device, and HCCL
reaches the other ranks. `start(config)` initialises collective communication once per process in a session of its
own (npu_ops.initialize_system, which rank queries before the first training session need) and checks HCCL's rank
and size against RANK_ID/RANK_SIZE; shutdown_system runs in that session when the process exits, as the adapter's
docs ask. That session is the process's first on the device, so GE takes its start-up options (precision_mode,
profiling) from it and ignores later sessions' values: `config` must be the training session config.

Ops: all_reduce = hccl_ops.allreduce ("sum"/"max"/"min") then a division for the mean; broadcast_from_chief =
hccl_ops.broadcast(tensor=[variable], root_rank=0) + assign for every variable. Adapters before 2026 all-reduce
int8/int16/int32/float16/float32 only, so int64 and float64 values (Team's config fingerprints and steps, integers
below 2**52) travel as two int32 words: the maximum (minimum) of the high words, then of the low words among the
ranks that hold it.
Every wait on a peer is bounded twice: by HCCL's own execution timeout (left at HCCL's default, 1836 s, or the
user's HCCL_EXEC_TIMEOUT: the session sets no `hccl_timeout`, which the device would floor to a multiple of 68 s) and
by `operation_timeout_in_ms` / RunOptions like the host engine (base.Collectives: first runs, which compile for
the device, get the first-run bound).
"""
import atexit
import os

from unet_perf import rank_table
from unet_perf.backends.ascend import npu_optimizer_op
from unet_perf.backends.base import TRAIN, Collectives, what_happened
from unet_perf.compat import v1
from unet_perf.errors import UserError

ROOT_RANK = 0
# What HcomAllReduce accepts in adapters before 2026 (Ascend/tensorflow tf_adapter/ops/hccl_ops.cc).
HCCL_DTYPES = (v1.int8, v1.int16, v1.int32, v1.float16, v1.float32)
_WORD = 2 ** 32
_REDUCTIONS = {"Add": "sum", "Max": "max", "Min": "min"}
HCCL_DEFAULT_TIMEOUT_SEC = 1836  # HCCL_EXEC_TIMEOUT's default (CANN environment variable reference)


def _device_number(env, name):
    """The integer in environment variable `name`, None when unset or empty; UserError when not an integer."""
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError("environment variable {}={!r} must be the device number (0..7)".format(name, text))


def local_device_id(env=None):
    """The logical device this process uses: ASCEND_DEVICE_ID (else DEVICE_ID); UserError when neither is set."""
    env = os.environ if env is None else env
    for name in ("ASCEND_DEVICE_ID", "DEVICE_ID"):
        number = _device_number(env, name)
        if number is not None:
            return number
    raise UserError("set ASCEND_DEVICE_ID (or DEVICE_ID) to this rank's local device number: HCCL needs it with "
                    "RANK_TABLE_FILE")


def physical_device_id(env=None):
    """(physical device id as the rank table lists it, the variables it came from).

    DEVICE_ID when set; else ASCEND_DEVICE_ID, which is logical: the index into ASCEND_RT_VISIBLE_DEVICES when that
    is set, the physical id otherwise.
    """
    env = os.environ if env is None else env
    physical = _device_number(env, "DEVICE_ID")
    if physical is not None:
        return physical, "DEVICE_ID"
    logical = local_device_id(env)
    visible = [item.strip() for item in env.get("ASCEND_RT_VISIBLE_DEVICES", "").split(",") if item.strip()]
    if not visible:
        return logical, "ASCEND_DEVICE_ID"
    if not 0 <= logical < len(visible) or not visible[logical].isdigit():
        raise UserError("ASCEND_DEVICE_ID={} is not a position in ASCEND_RT_VISIBLE_DEVICES={}; set DEVICE_ID to "
                        "the physical device of this rank".format(logical, ",".join(visible)))
    return int(visible[logical]), "ASCEND_DEVICE_ID via ASCEND_RT_VISIBLE_DEVICES"


class NpuCollectives(Collectives):
    """HCCL collectives for one rank of `cluster` (a cluster.Cluster from the rank table, size > 1).

    Args:
        cluster: this process's cluster.Cluster (source RANK_TABLE_FILE).
        timeout_sec: bound of every wait on a peer (--collective_timeout).
        env: the environment to read (default os.environ).
    """

    device = None  # the graph stays unplaced: the NpuOptimizer pass puts it on this process's device

    def __init__(self, cluster, timeout_sec, env=None):
        env = os.environ if env is None else env
        if cluster.size < 2:
            raise ValueError("NpuCollectives needs at least two ranks")
        if not env.get("JOB_ID", "").strip():
            raise UserError("JOB_ID is not set: npu_bridge's all-reduce reads the rank count through it (NPUBasics); "
                            "export JOB_ID=<any job name> for every rank, as the ModelZoo 8p scripts do")
        self.cluster = cluster
        self.timeout_sec = float(timeout_sec)
        self.device_id = local_device_id(env)
        table = env.get("RANK_TABLE_FILE", "")
        if table:
            server_id, table_device = rank_table.device_of_rank(table, cluster.rank)
            physical, source = physical_device_id(env)
            if table_device != physical:
                raise UserError("RANK_ID={} is device {} of server {} in RANK_TABLE_FILE {}, but this process has "
                                "physical device {} ({}); give each process the rank_id of its own device".format(
                                    cluster.rank, table_device, server_id, table, physical, source))
        self._system = None  # (session, shutdown op) once collective communication is initialised

    # --- process-level set-up ---------------------------------------------------------------------------------

    def configure(self, config):
        """Add the HCCL settings to a ConfigProto (in place; the NpuOptimizer pass is added when missing) and
        return it: hcom_parallel (all-reduces overlap the backward pass) and the session's operation_timeout_in_ms.
        No hccl_timeout: HCCL keeps its default or the user's HCCL_EXEC_TIMEOUT."""
        custom_op = npu_optimizer_op(config)
        custom_op.parameter_map["hcom_parallel"].b = True
        self.bound_session(config)
        return config

    def start(self, config=None):
        """Initialise collective communication once (its own session, shut down at exit) and check HCCL's view
        of this rank against RANK_ID/RANK_SIZE. Returns the session target: "" (the device is in-process).

        `config` is the training session config (NpuBackend.session_config), needed by the first call: the first
        session of the process fixes GE's start-up options, precision_mode and profiling among them, for good.
        """
        if self._system is None:
            if config is None:
                raise ValueError("NpuCollectives.start: the first call needs the training session config (build "
                                 "the backend with NpuBackend(collectives=..., cfg=cfg))")
            from npu_bridge.estimator import npu_ops
            graph = v1.Graph()
            with graph.as_default():
                init_op = npu_ops.initialize_system()
                shutdown_op = npu_ops.shutdown_system()
            startup = v1.ConfigProto()
            startup.CopyFrom(config)
            sess = v1.Session("", graph=graph, config=self.configure(startup))
            with self.peer_errors("initialising HCCL (npu_ops.initialize_system)"):
                sess.run(init_op, options=self.run_options())
            self._system = (sess, shutdown_op)
            atexit.register(self.shutdown)
            self._check_ranks()
        return ""

    def _check_ranks(self):
        from npu_bridge.npu_init import get_rank_id, get_rank_size
        hccl_rank, hccl_size = int(get_rank_id()), int(get_rank_size())
        if (hccl_rank, hccl_size) != (self.cluster.rank, self.cluster.size):
            raise UserError("HCCL reports rank {} of {} for this process but RANK_ID={} RANK_SIZE={}; make RANK_ID "
                            "the rank_id of device {} in RANK_TABLE_FILE".format(
                                hccl_rank, hccl_size, self.cluster.rank, self.cluster.size, self.device_id))

    def shutdown(self):
        """npu_ops.shutdown_system in the initialisation session, then close it (idempotent)."""
        if self._system is None:
            return
        sess, shutdown_op = self._system
        self._system = None
        try:
            sess.run(shutdown_op)
        finally:
            sess.close()

    # --- graph building ---------------------------------------------------------------------------------------

    def all_reduce(self, tensor, merge_op="Add", final_op="Div", purpose=TRAIN):
        """One HCCL all-reduce over all ranks: Add+Div = mean, Add+Id = sum, Max+Id = maximum, Min+Id = minimum.
        HCCL has one world group: `purpose` changes nothing."""
        from npu_bridge.hccl import hccl_ops
        del purpose
        if merge_op not in _REDUCTIONS or final_op not in ("Div", "Id"):
            raise ValueError("all_reduce supports merge_op Add/Max/Min and final_op Div/Id, got {}/{}".format(
                merge_op, final_op))
        if tensor.dtype in HCCL_DTYPES:
            reduced = hccl_ops.allreduce(tensor, _REDUCTIONS[merge_op])
        elif tensor.dtype in (v1.int64, v1.float64) and merge_op in ("Max", "Min") and final_op == "Id":
            reduced = _extreme_in_int32_words(tensor, _REDUCTIONS[merge_op])
        else:
            raise ValueError("HCCL all-reduces {} only ({} {} asked); 64-bit values only as Max/Min".format(
                "/".join(dtype.name for dtype in HCCL_DTYPES), merge_op, tensor.dtype.name))
        if final_op == "Div":
            reduced = reduced / v1.cast(self.cluster.size, tensor.dtype)
        return reduced

    def mean(self, tensors):
        """Mean over ranks of each tensor (None passes through): HCCL sum, then division by the rank count."""
        return [None if tensor is None else self.all_reduce(tensor) for tensor in tensors]

    def broadcast_from_chief(self, variables):
        """An op assigning rank 0's value of every variable to every rank's copy (hccl_ops.broadcast + assign, the
        adapter's sess.run recipe)."""
        from npu_bridge.hccl import hccl_ops
        assigns = []
        for variable in variables:
            received = hccl_ops.broadcast(tensor=[variable], root_rank=ROOT_RANK)[0]
            assigns.append(v1.assign(variable, received))
        return v1.group(*assigns)

    # --- errors -----------------------------------------------------------------------------------------------

    def peer_failure(self, err, doing, elapsed, bound):
        """A one-line UserError for an OpError raised while `doing` after `elapsed` seconds of a wait bounded by
        `bound`: timed out (this session's deadline or HCCL's own) or failed. HCCL does not say which rank is
        missing, so the message points at every rank's log."""
        happened = what_happened(err)
        if happened == "timed out":
            if isinstance(err, v1.errors.DeadlineExceededError):
                limit = self.bound_name(bound)
            else:
                limit = "HCCL's execution timeout, HCCL_EXEC_TIMEOUT, default {} s".format(HCCL_DEFAULT_TIMEOUT_SEC)
            what = "an HCCL collective timed out after {:.1f} s ({}): another of the {} ranks is hung or slow, " \
                   "was stopped or never started".format(elapsed, limit, self.cluster.size)
        else:
            reason = happened[len("failed ("):-1] if happened.startswith("failed (") else happened
            what = "an HCCL collective failed after {:.1f} s ({}): another of the {} ranks stopped, was killed or " \
                   "never started".format(elapsed, reason, self.cluster.size)
        return UserError("rank {} (device {}) while {}: {} (see each rank's log); the last checkpoint is intact, "
                         "restart every rank with the same command to resume".format(
                             self.cluster.rank, self.device_id, doing, what))


def _extreme_in_int32_words(tensor, reduction):
    """The "max"/"min" over ranks of an int64 or float64 tensor of integers (|x| < 2**63; float64 values are
    rounded, exact below 2**52), through int32 all-reduces only: the extreme of the high words, then the extreme of
    the low words among the ranks holding that high word (the others send a value that never wins)."""
    from npu_bridge.hccl import hccl_ops
    value = tensor if tensor.dtype == v1.int64 else v1.cast(v1.round(tensor), v1.int64)
    high = v1.math.floordiv(value, _WORD)  # in [-2**31, 2**31)
    low = value - high * _WORD - 2 ** 31  # [0, 2**32) shifted into int32's range, order kept
    high, low = v1.cast(high, v1.int32), v1.cast(low, v1.int32)
    best_high = hccl_ops.allreduce(high, reduction)
    loser = v1.fill(v1.shape(low), v1.constant(v1.int32.min if reduction == "max" else v1.int32.max, v1.int32))
    best_low = hccl_ops.allreduce(v1.where(v1.math.equal(high, best_high), low, loser), reduction)
    result = v1.cast(best_high, v1.int64) * _WORD + v1.cast(best_low, v1.int64) + 2 ** 31
    return result if tensor.dtype == v1.int64 else v1.cast(result, tensor.dtype)

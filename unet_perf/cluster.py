"""Who am I in a data-parallel job: rank, size, peers and chief, from the environment the platform already sets.

    cluster = from_environment()          # TF_CONFIG (CPU/GPU) or RANK_TABLE_FILE/RANK_ID/RANK_SIZE (Ascend)
    cluster.rank, cluster.size, cluster.chief, cluster.addresses

- TF_CONFIG (what Kubernetes/Kubeflow, Slurm wrappers and unet_perf.launch set): {"cluster": {"worker": [...]}
  (optionally also "chief": [one address]), "task": {"type": "worker"|"chief", "index": i}}. The chief, when listed,
  is rank 0 and the workers follow; otherwise worker 0 is the chief.
- Ascend: RANK_TABLE_FILE (the JSON rank table of the ModelZoo 8p scripts), RANK_ID (global rank), RANK_SIZE.
  Parsed and validated here; the NPU backend does the wiring.
Nothing here imports TensorFlow: every problem is a one-line UserError before any graph is built.
"""
import json
import os
import socket

from unet_perf.errors import UserError

CHIEF_RANK = 0


class Cluster(object):
    """One process's place in the job.

    Attributes:
        rank: this process's global rank (0 .. size-1); rank 0 is the chief.
        size: number of workers.
        addresses: "host:port" of every rank (host jobs; on Ascend the rank table's server ids, no ports).
        source: where the facts came from: "single", "TF_CONFIG" or "RANK_TABLE_FILE".
    """

    def __init__(self, rank=0, size=1, addresses=None, source="single"):
        self.rank = int(rank)
        self.size = int(size)
        self.addresses = list(addresses or [])
        self.source = source

    @property
    def chief(self):
        return self.rank == CHIEF_RANK

    @property
    def distributed(self):
        return self.size > 1

    def describe(self, rank):
        """'worker 1 (127.0.0.1:4242)': how messages name a peer."""
        address = self.addresses[rank] if rank < len(self.addresses) else "?"
        return "worker {} ({})".format(rank, address)

    def __repr__(self):
        return "Cluster(rank={}, size={}, source={})".format(self.rank, self.size, self.source)


SINGLE = Cluster()


def from_environment(env=None):
    """The Cluster described by `env` (default os.environ): TF_CONFIG, else RANK_TABLE_FILE/RANK_ID/RANK_SIZE
    with RANK_SIZE > 1, else a single worker."""
    env = os.environ if env is None else env
    if env.get("TF_CONFIG", "").strip():
        return from_tf_config(env["TF_CONFIG"])
    if env.get("RANK_TABLE_FILE") and _int_env(env, "RANK_SIZE", 1) > 1:
        return from_rank_table(env["RANK_TABLE_FILE"], env.get("RANK_ID"), env.get("RANK_SIZE"))
    return SINGLE


def _int_env(env, name, default):
    text = env.get(name, "")
    if not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError("environment variable {}={!r} must be an integer".format(name, text))


def from_tf_config(text):
    """Parse the TF_CONFIG JSON text into a Cluster (UserError naming TF_CONFIG and the fix when malformed)."""
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise UserError("TF_CONFIG is not valid JSON ({}); expected {{\"cluster\": {{\"worker\": [\"host:port\", "
                        "...]}}, \"task\": {{\"type\": \"worker\", \"index\": i}}}}".format(err))
    if not isinstance(spec, dict) or not all(isinstance(spec.get(key), dict) for key in ("cluster", "task")):
        raise UserError("TF_CONFIG needs a \"cluster\" object and a \"task\" object, got {}".format(text[:200]))
    jobs = spec["cluster"]
    unsupported = sorted(set(jobs) - {"worker", "chief"})
    if unsupported:
        raise UserError("TF_CONFIG cluster has job(s) {} that unet_perf does not use (synchronous data parallel "
                        "needs only \"worker\" and optionally \"chief\"); remove them".format(", ".join(unsupported)))
    chief = _address_list(jobs, "chief")
    workers = _address_list(jobs, "worker")
    if len(chief) > 1:
        raise UserError("TF_CONFIG lists {} chief addresses; list at most one (or none: worker 0 leads)".format(
            len(chief)))
    addresses = chief + workers
    if not addresses:
        raise UserError("TF_CONFIG lists no workers: set cluster.worker to a list of \"host:port\"")
    if len(set(addresses)) != len(addresses):
        raise UserError("TF_CONFIG lists an address twice: {}; every worker needs its own host:port".format(
            ", ".join(addresses)))
    task = spec["task"]
    kind = task.get("type")
    index = task.get("index", 0)
    if kind not in ("worker", "chief"):
        raise UserError("TF_CONFIG task.type must be \"worker\" or \"chief\", got {!r}".format(kind))
    if not isinstance(index, int) or isinstance(index, bool):
        raise UserError("TF_CONFIG task.index must be an integer, got {!r}".format(index))
    count = len(chief) if kind == "chief" else len(workers)
    if not 0 <= index < count:
        raise UserError("TF_CONFIG task.index {} is out of range: cluster.{} has {} address(es) (0..{})".format(
            index, kind, count, count - 1))
    rank = index if kind == "chief" else len(chief) + index
    return Cluster(rank, len(addresses), addresses, "TF_CONFIG")


def _address_list(jobs, name):
    value = jobs.get(name, [])
    if isinstance(value, dict):  # {"0": "host:port", ...} is also accepted by TensorFlow's ClusterSpec
        try:
            value = [value[key] for key in sorted(value, key=int)]
        except ValueError:
            raise UserError("TF_CONFIG cluster.{} keys must be task indices, got {}".format(name, sorted(value)))
    if not isinstance(value, list):
        raise UserError("TF_CONFIG cluster.{} must be a list of \"host:port\", got {!r}".format(name, value))
    for address in value:
        split_address(address, "TF_CONFIG cluster.{}".format(name))
    return list(value)


def split_address(address, where):
    """(host, port int) of "host:port"; UserError naming `where` when it is not one."""
    if not isinstance(address, str) or ":" not in address:
        raise UserError("{} entry {!r} is not \"host:port\"".format(where, address))
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise UserError("{} entry {!r} is not \"host:port\" with a port in 1..65535".format(where, address))
    return host.strip("[]"), number


def from_rank_table(path, rank_id, rank_size):
    """Cluster from an Ascend rank table file and the RANK_ID/RANK_SIZE environment values (strings or ints).

    Accepts the rank-table layout of the ModelZoo scripts: {"server_count": "1", "server_list": [{"server_id":
    ip, "device": [{"device_id": "0", "device_ip": ip, "rank_id": "0"}, ...]}], ...}. addresses[r] is the
    server id of rank r.
    """
    try:
        with open(path) as handle:
            table = json.load(handle)
    except (OSError, IOError) as err:
        raise UserError("RANK_TABLE_FILE {} cannot be read ({}); point it at the job's rank table".format(
            path, err.strerror or err))
    except ValueError as err:
        raise UserError("RANK_TABLE_FILE {} is not valid JSON ({})".format(path, err))
    servers = table.get("server_list") if isinstance(table, dict) else None
    if not isinstance(servers, list) or not servers:
        raise UserError("RANK_TABLE_FILE {} has no server_list; expected the rank table layout of the ModelZoo "
                        "8p scripts".format(path))
    ranks = {}
    for server in servers:
        for device in server.get("device", []) if isinstance(server, dict) else []:
            try:
                rank = int(device["rank_id"])
            except (KeyError, TypeError, ValueError):
                raise UserError("RANK_TABLE_FILE {}: a device entry has no integer rank_id: {}".format(path, device))
            if rank in ranks:
                raise UserError("RANK_TABLE_FILE {} lists rank_id {} twice".format(path, rank))
            ranks[rank] = str(server.get("server_id", "?"))
    if sorted(ranks) != list(range(len(ranks))):
        raise UserError("RANK_TABLE_FILE {}: rank_ids must be 0..{} without gaps, got {}".format(
            path, len(ranks) - 1, sorted(ranks)))
    size = _parse_int(rank_size, "RANK_SIZE")
    if size != len(ranks):
        raise UserError("RANK_SIZE={} disagrees with RANK_TABLE_FILE {} ({} devices); set RANK_SIZE={}".format(
            size, path, len(ranks), len(ranks)))
    rank = _parse_int(rank_id, "RANK_ID")
    if not 0 <= rank < size:
        raise UserError("RANK_ID={} is out of range for RANK_SIZE={} (0..{})".format(rank, size, size - 1))
    return Cluster(rank, size, [ranks[r] for r in range(size)], "RANK_TABLE_FILE")


def _parse_int(value, name):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError("environment variable {}={!r} must be an integer".format(name, value))


def check_port_free(cluster):
    """UserError when this rank's own port is already taken on this machine (before any server starts)."""
    host, port = split_address(cluster.addresses[cluster.rank], cluster.source)
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("" if host in ("localhost",) else host, port))
    except OSError as err:
        raise UserError("port {} of {} from {} is in use or not bindable here ({}); free it or choose another "
                        "port".format(port, cluster.describe(cluster.rank), cluster.source, err.strerror or err))
    finally:
        probe.close()


def unreachable_peers(cluster, timeout=2.0):
    """Ranks (other than this one) whose address refuses or ignores a TCP connection now: dead or never started."""
    missing = []
    for rank, address in enumerate(cluster.addresses):
        if rank == cluster.rank:
            continue
        try:
            host, port = split_address(address, cluster.source)
            connection = socket.create_connection((host, port), timeout=timeout)
            connection.close()
        except (OSError, UserError):
            missing.append(rank)
    return missing


def wait_for_peers(cluster, timeout_sec, poll_sec=0.2):
    """Block until every peer's port accepts TCP connections; UserError naming the missing ones after timeout_sec.

    Servers listen as soon as their process has started them, so this is the bounded start-up wait (it also keeps
    TensorFlow's own connection retries, and their log noise, out of the way).
    """
    import time

    deadline = time.time() + timeout_sec
    missing = unreachable_peers(cluster, timeout=1.0)
    while missing and time.time() < deadline:
        time.sleep(poll_sec)
        missing = unreachable_peers(cluster, timeout=1.0)
    if missing:
        raise UserError("{}: {} did not start within {:g} s (--collective_timeout); start every worker of the "
                        "{} cluster".format(cluster.describe(cluster.rank),
                                            ", ".join(cluster.describe(rank) for rank in missing),
                                            timeout_sec, cluster.source))

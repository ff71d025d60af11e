"""`python -m unet_perf.launch --nproc N -- <train flags>`: N local workers of unet_perf.train on 127.0.0.1.

Each worker gets TF_CONFIG (free ports picked by binding port 0), a fair, disjoint share of this process's CPU
cores (sched_setaffinity), TF_CPP_MIN_LOG_LEVEL=3 unless set (TensorFlow's C++ log lines, e.g. gRPC's when a peer
dies, would bury the worker's own one-line error), and its own session/process group. The launcher prefixes every
output line with the rank ("[0] ..."), forwards SIGINT/SIGTERM to all workers (they agree to stop after the same
step and the chief writes a checkpoint), and when a worker fails says which one and how ("worker 1 was killed by
SIGKILL"), gives the others --grace seconds to notice and stop by themselves (each prints one line naming the lost
worker), then SIGTERM, then SIGKILL after another --grace. Exit status: 0 when all finish, else the first failure's
(128 + the signal number for a worker killed by a signal). No TensorFlow import here.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from unet_perf.errors import UserError, run_cli

DEFAULT_ENTRY = "unet_perf.train"


def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports that were free a moment ago (bound to port 0 together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind((host, 0))
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def tf_config(addresses, rank):
    """The TF_CONFIG JSON text of worker `rank` in a cluster of `addresses`."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": rank}})


def describe_exit(code):
    """How a worker ended, from its Popen returncode: "exited with status 2", "was killed by SIGKILL"."""
    if code >= 0:
        return "exited with status {}".format(code)
    try:
        return "was killed by {}".format(signal.Signals(-code).name)
    except ValueError:
        return "was killed by signal {}".format(-code)


def shell_status(code):
    """The launcher's exit status for a worker's returncode: itself, or 128 + s for a worker killed by signal s."""
    return code if code >= 0 else 128 - code


def core_shares(cores, count):
    """Split the sorted list `cores` into `count` contiguous, disjoint, near-equal shares (at least one core each;
    with fewer cores than workers, workers share cores round-robin)."""
    cores = sorted(cores)
    if len(cores) < count:
        return [[cores[rank % len(cores)]] for rank in range(count)]
    per, extra = divmod(len(cores), count)
    shares, start = [], 0
    for rank in range(count):
        size = per + (1 if rank < extra else 0)
        shares.append(cores[start:start + size])
        start += size
    return shares


class Workers(object):
    """The running worker processes: output pumping, signal forwarding, first-failure shutdown."""

    def __init__(self, commands, envs, cores, out=None, grace=30.0):
        self.out = out if out is not None else sys.stdout
        self.grace = grace
        self.lock = threading.Lock()
        self.processes = []
        for command, env, share in zip(commands, envs, cores):
            self.processes.append(subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=affinity_setter(share)))
        self.pumps = [threading.Thread(target=self._pump, args=(rank, process.stdout), daemon=True)
                      for rank, process in enumerate(self.processes)]
        for pump in self.pumps:
            pump.start()

    def _pump(self, rank, stream):
        prefix = "[{}] ".format(rank)
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.lock:
                self.out.write(prefix + line.replace("\r", "\r" + prefix) + "\n")
                self.out.flush()

    def signal_all(self, number):
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, number)
                except (ProcessLookupError, PermissionError):
                    pass

    def wait(self):
        """Wait for all; after the first non-zero status stop the others (see the module doc). Returns the
        launcher's exit status."""
        first_failure = None
        pending = list(range(len(self.processes)))
        while pending:
            for rank in list(pending):
                code = self.processes[rank].poll()
                if code is None:
                    continue
                pending.remove(rank)
                if code != 0 and first_failure is None:
                    first_failure = (rank, code)
                    self._say("worker {} {}: the others get {:g} s to stop by themselves".format(
                        rank, describe_exit(code), self.grace))
                    self._stop_others()
            time.sleep(0.1)
        for pump in self.pumps:
            pump.join(timeout=5)
        if first_failure is None:
            return 0
        rank, code = first_failure
        others = ["worker {} {}".format(other, describe_exit(process.returncode))
                  for other, process in enumerate(self.processes) if other != rank]
        self._say("worker {} {} first{}; exit status {}".format(
            rank, describe_exit(code), "; " + ", ".join(others) if others else "", shell_status(code)))
        return shell_status(code)

    def _stop_others(self):
        """The others usually notice the lost peer at once and end with their own one-line error; those still
        running after --grace get SIGTERM, and SIGKILL after another --grace."""
        for number in (signal.SIGTERM, signal.SIGKILL):
            deadline = time.time() + self.grace
            while time.time() < deadline and any(p.poll() is None for p in self.processes):
                time.sleep(0.1)
            if any(p.poll() is None for p in self.processes):
                self._say("sending {} to the workers still running".format(signal.Signals(number).name))
                self.signal_all(number)

    def _say(self, message):
        with self.lock:
            self.out.write("[launch] {}\n".format(message))
            self.out.flush()


def affinity_setter(cores):
    """A Popen preexec_fn pinning the child to `cores`; None (no pinning) when cores is empty or the platform
    cannot pin."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return None

    def set_affinity():
        os.sched_setaffinity(0, cores)
    return set_affinity


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m unet_perf.launch", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        usage="python -m unet_perf.launch --nproc N [--cores_per_worker C] -- <unet_perf.train flags>")
    parser.add_argument("--nproc", type=int, required=True, help="number of local workers")
    parser.add_argument("--cores_per_worker", type=int, default=0,
                        help="CPU cores pinned per worker; 0 = a fair share of the cores this launcher may use")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds the other workers get to stop after one fails, before SIGKILL")
    parser.add_argument("--entry", default=DEFAULT_ENTRY, help="module each worker runs with `python -m`")
    return parser


def launch_from_args(argv):
    if "--" in argv:
        split = argv.index("--")
        own, worker_flags = argv[:split], argv[split + 1:]
    else:
        own, worker_flags = argv, []
    args = build_parser().parse_args(own)
    if args.nproc < 1:
        raise UserError("--nproc must be at least 1, got {}".format(args.nproc))
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.cores_per_worker < 0 or args.cores_per_worker * args.nproc > max(len(available), 1):
        raise UserError("--cores_per_worker {} x --nproc {} exceeds the {} cores available here".format(
            args.cores_per_worker, args.nproc, len(available)))
    if available and args.nproc > len(available):
        print("warning: --nproc {} is more than the {} core(s) this launcher may use; workers will share cores "
              "and the run is slower than with --nproc {}".format(args.nproc, len(available), len(available)),
              file=sys.stderr, flush=True)
    pool = available[:args.cores_per_worker * args.nproc] if args.cores_per_worker else available
    shares = core_shares(pool, args.nproc) if pool else [None] * args.nproc
    addresses = ["127.0.0.1:{}".format(port) for port in free_ports(args.nproc)]
    command = [sys.executable, "-m", args.entry] + worker_flags
    envs = []
    for rank in range(args.nproc):
        env = dict(os.environ, TF_CONFIG=tf_config(addresses, rank))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see the module doc; export it (e.g. 0) to see those lines
        if shares[rank]:
            # Thread pools sized to the share: TensorFlow would otherwise size them from all the machine's cores.
            env.setdefault("OMP_NUM_THREADS", str(len(shares[rank])))
        envs.append(env)
    workers = Workers([command] * args.nproc, envs, shares, grace=args.grace)

    def forward(number, frame):
        workers._say("{} received: forwarding to every worker".format(signal.Signals(number).name))
        workers.signal_all(number)

    previous = [signal.signal(signal.SIGINT, forward), signal.signal(signal.SIGTERM, forward)]
    try:
        return workers.wait()
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def main(argv=None):
    """`python -m unet_perf.launch`: exits with the first non-zero worker status (2 for launcher flag errors)."""
    run_cli(launch_from_args, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()

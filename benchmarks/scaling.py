"""Data-parallel scaling on this host: `python benchmarks/throughput.py --workers 1,2 [--cores_per_worker 1]`.

For each worker count N, N processes of this file (worker mode) train the same config on 127.0.0.1 (TF_CONFIG,
TensorFlow collective ops), each pinned to its own --cores_per_worker cores, N=1 included, so every N runs on
equally sized workers. Each worker times the same Session.runs after warm-up (the workers are synchronous: the
chief's blocks are the job's). Reported per N: global img/s (N x per-worker batch x steps / block time), per-worker
img/s, scaling efficiency = img/s(N) / (N x img/s(1)), and the bytes all-reduced per step (gradients + loss).
"""
import dataclasses
import json
import os
import subprocess
import sys
import time

RESULT_PREFIX = "scaling-result "


def measure_scaling(cfg, worker_counts, cores_per_worker, source_kind, steps, repeats, warmup_steps, log,
                    timeout_sec=1800):
    """One result dict per worker count (see the module docstring); cfg is the validated Config of one point."""
    from unet_perf.errors import UserError
    from unet_perf.launch import affinity_setter, core_shares, free_ports, tf_config

    cores = sorted(os.sched_getaffinity(0))
    needed = max(worker_counts) * cores_per_worker
    if needed > len(cores):
        raise UserError("--workers {} with --cores_per_worker {} needs {} cores, this process may use {}".format(
            max(worker_counts), cores_per_worker, needed, len(cores)))
    spec = {"config": dataclasses.asdict(cfg), "source": source_kind, "steps": steps, "repeats": repeats,
            "warmup_steps": warmup_steps}
    results, baseline = [], None
    for count in worker_counts:
        log("scaling: {} worker(s) x {} core(s), {} {}".format(count, cores_per_worker, source_kind, _point(cfg)))
        addresses = ["127.0.0.1:{}".format(port) for port in free_ports(count)]
        shares = core_shares(cores[:count * cores_per_worker], count)
        processes = []
        for rank in range(count):
            env = dict(os.environ, OMP_NUM_THREADS=str(cores_per_worker), TF_CPP_MIN_LOG_LEVEL="2")
            env.pop("TF_CONFIG", None)
            if count > 1:
                env["TF_CONFIG"] = tf_config(addresses, rank)
            processes.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, universal_newlines=True, preexec_fn=affinity_setter(shares[rank])))
        outputs = _collect(processes, timeout_sec)
        per_worker = [_result_line(out, err, rank) for rank, (out, err) in enumerate(outputs)]
        chief = per_worker[0]
        result = {"mode": "scaling", "workers": count, "cores_per_worker": cores_per_worker, "source": source_kind,
                  "batch_size": cfg.batch_size, "global_batch_size": cfg.batch_size * count,
                  "crop_size": cfg.crop_size, "base_filters": cfg.base_filters,
                  "iterations_per_loop": cfg.iterations_per_loop, "precision": cfg.precision,
                  "per_worker_images_per_sec": chief["images_per_sec"],
                  "images_per_sec": _scaled(chief["images_per_sec"], count),
                  "allreduce_bytes_per_step": chief["allreduce_bytes_per_step"] if count > 1 else 0,
                  "worker_images_per_sec_medians": [w["images_per_sec"]["median"] for w in per_worker]}
        if baseline is None and count == 1:
            baseline = result["images_per_sec"]["median"]
        if baseline:
            result["scaling_efficiency"] = result["images_per_sec"]["median"] / (count * baseline)
        results.append(result)
    return results


def _point(cfg):
    return "batch {}/worker crop {} base {} K {} {}".format(cfg.batch_size, cfg.crop_size, cfg.base_filters,
                                                            cfg.iterations_per_loop, cfg.precision)


def _scaled(figure, factor):
    scaled = dict((key, figure[key] * factor) for key in ("median", "min", "max"))
    scaled["samples"] = [value * factor for value in figure["samples"]]
    return scaled


def _collect(processes, timeout_sec):
    deadline = time.time() + timeout_sec
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.time())))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def _result_line(out, err, rank):
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    last = [line for line in err.splitlines() if line.strip()][-3:]
    raise RuntimeError("scaling worker {} failed: {}".format(rank, " | ".join(last)))


def format_scaling(results):
    """The scaling table (one line per worker count)."""
    header = "{:>7} {:>6} {:>6} {:>26} {:>24} {:>10} {:>14}".format(
        "workers", "cores", "batch", "global img/s med [min-max]", "per-worker img/s", "efficiency",
        "allreduce B/step")
    lines = [header, "-" * len(header)]
    for r in results:
        total, one = r["images_per_sec"], r["per_worker_images_per_sec"]
        lines.append("{:>7} {:>6} {:>6} {:>26} {:>24} {:>10} {:>14}".format(
            r["workers"], r["cores_per_worker"], "{}x{}".format(r["workers"], r["batch_size"]),
            "{:.2f} [{:.2f}-{:.2f}]".format(total["median"], total["min"], total["max"]),
            "{:.2f} [{:.2f}-{:.2f}]".format(one["median"], one["min"], one["max"]),
            "{:.3f}".format(r["scaling_efficiency"]) if "scaling_efficiency" in r else "-",
            r["allreduce_bytes_per_step"]))
    return "\n".join(lines)


# --- worker mode ---------------------------------------------------------------------------------------------------

def worker_main(spec_text):
    """Time cfg's training as one worker of the TF_CONFIG cluster (or alone); print one RESULT_PREFIX JSON line."""
    spec = json.loads(spec_text)
    from unet_perf import cluster as cluster_lib
    from unet_perf import compat
    from unet_perf.training import assembly
    from unet_perf.backends import get_backend
    from unet_perf.config import Config
    import bench_lib

    compat.enable_graph_mode()
    cfg = Config(**spec["config"]).validate()
    team = cluster_lib.from_environment()
    backend = get_backend(cfg, team)
    if spec["source"] == "pipeline":
        from unet_perf.data.loading import load_dataset
        train, _, weights = load_dataset(cfg)
        source = assembly.pipeline_source(cfg, train, weights, 0, team.rank, team.size)
    else:
        source = assembly.cached_batch_source(cfg)
    training = assembly.build(cfg, source, backend=backend)
    with training.graph.as_default():
        trainable = [v for v in compat.v1.trainable_variables()]
    allreduce_bytes = sum(int(v.shape.num_elements()) * v.dtype.base_dtype.size for v in trainable) + 4  # + loss
    k = cfg.iterations_per_loop
    runs = assembly.steps_to_runs(spec["steps"], k)
    sess, fetches = assembly.open_session(training, cfg)
    try:
        for _ in range(assembly.steps_to_runs(spec["warmup_steps"], k)):
            sess.run(fetches)
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            for _ in range(runs):
                sess.run(fetches)
            times.append(time.perf_counter() - start)
    finally:
        sess.close()
    images = runs * k * cfg.batch_size
    print(RESULT_PREFIX + json.dumps({"rank": team.rank, "images_per_sec": bench_lib.stats([images / t for t in times]),
                                      "allreduce_bytes_per_step": allreduce_bytes}), flush=True)


if __name__ == "__main__":  # a worker process; `python benchmarks/scaling.py` has benchmarks/ on sys.path
    worker_main(sys.argv[1])

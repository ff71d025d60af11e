"""Loss-scale behaviour: fp16 with dynamic loss scaling next to fp32, step by step, on the same batches.

Both runs use K = 1 (one step per Session.run, so every step's values are fetched), a deterministic pipeline and
the same seed, so they see the same augmented batches. The fetches are the backends' FETCH_KEYS, so this works
on the NPU backend too (there `loss_scale` is the manager's variable and `overflow` comes from the overflow
status tensor).
"""
import dataclasses

import numpy as np

from unet_perf.training import assembly


def report_configs(cfg, steps):
    """(fp16 dynamic-scaling config, fp32 config) for `steps` single-step runs on identical batches."""
    common = dict(iterations_per_loop=1, max_steps=steps, save_checkpoints_steps=1, val_every=0,
                  deterministic=True)
    fp16 = dataclasses.replace(cfg, precision="fp16", loss_scale="dynamic", **common).validate()
    fp32 = dataclasses.replace(cfg, precision="fp32", loss_scale="none", **common).validate()
    return fp16, fp32


def run_report(cfg, steps, source="pipeline"):
    """Run both trainings and summarise them (see summarize)."""
    fp16, fp32 = report_configs(cfg, steps)
    records16 = run_steps(fp16, source, steps)
    records32 = run_steps(fp32, source, steps)
    report = summarize(records16, records32, fp16.loss_scale_init)
    from unet_perf.backends import get_backend
    report.update({"source": source, "growth_interval": fp16.loss_scale_growth_interval,
                   "backend": get_backend(fp16).name})
    return report


def run_steps(cfg, source_kind, runs):
    """Fetched values (dicts of numpy scalars) of `runs` consecutive Session.runs of cfg's training loop."""
    training = assembly.build(cfg, assembly.dataset_source(cfg, source_kind))
    sess, fetches = assembly.open_session(training, cfg)
    try:
        return [sess.run(fetches) for _ in range(runs)]
    finally:
        sess.close()


def scale_trajectory_changes(init_scale, scales):
    """How many times the per-step scale differs from the one before it (the first step compares to init)."""
    previous = [float(init_scale)] + [float(s) for s in scales[:-1]]
    return int(sum(1 for before, after in zip(previous, scales) if float(after) != before))


def summarize(records16, records32, init_scale):
    """Counters, final scale, loss gap and the per-step series of an fp16 run (records16) vs fp32 (records32).

    Counters come from the backend's own state (skipped_steps, scale_changes, read after the last step) and are
    checked against the per-step series: skipped steps should equal the overflow flags, scale changes the number
    of changes in the scale trajectory.
    """
    scales = [float(r["loss_scale"]) for r in records16]
    overflow = [bool(r["overflow"]) for r in records16]
    loss16 = [float(r["loss"]) for r in records16]
    loss32 = [float(r["loss"]) for r in records32]
    skipped = int(records16[-1]["skipped_steps"])
    changes = int(records16[-1]["scale_changes"])
    trajectory_changes = scale_trajectory_changes(init_scale, scales)
    gaps = np.abs(np.asarray(loss16) - np.asarray(loss32))
    tail = max(1, len(gaps) // 4)
    return {
        "steps": len(records16),
        "init_scale": float(init_scale),
        "overflows": int(sum(overflow)),
        "skipped_steps": skipped,
        "scale_changes": changes,
        "trajectory_changes": trajectory_changes,
        "final_scale": scales[-1],
        "consistent": {"skipped_equals_overflows": skipped == sum(overflow),
                       "changes_match_trajectory": changes == trajectory_changes},
        "loss_gap": {
            "final_abs": float(gaps[-1]),
            "final_rel": float(gaps[-1] / max(abs(loss32[-1]), 1e-12)),
            "mean_abs": float(np.mean(gaps)),
            "mean_abs_last_quarter": float(np.mean(gaps[-tail:])),
        },
        "per_step": {"step": [int(r["global_step"]) for r in records16], "loss_scale": scales,
                     "overflow": overflow, "fp16_loss": loss16, "fp32_loss": loss32},
    }


def format_report(report):
    """A few readable lines for stdout."""
    gap = report["loss_gap"]
    lines = [
        "loss scale (fp16 dynamic vs fp32, {} steps, init {:g}, growth every {} steps):".format(
            report["steps"], report["init_scale"], report["growth_interval"]),
        "  overflows {}  skipped steps {}  scale changes {} (trajectory {})  final scale {:g}".format(
            report["overflows"], report["skipped_steps"], report["scale_changes"], report["trajectory_changes"],
            report["final_scale"]),
        "  loss gap to fp32: final {:.4g} ({:.2%}), mean {:.4g}, last quarter {:.4g}".format(
            gap["final_abs"], gap["final_rel"], gap["mean_abs"], gap["mean_abs_last_quarter"]),
    ]
    if not all(report["consistent"].values()):
        lines.append("  WARNING: counters disagree with the per-step series: {}".format(report["consistent"]))
    return "\n".join(lines)

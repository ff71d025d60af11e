"""PNG plots of the throughput and accuracy benchmarks. matplotlib is optional: without it, plots are skipped."""
import math
import os


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def config_label(result):
    classes = result.get("num_classes", 1)  # a --num_classes sweep: one bar per C
    return "{} K{} b{} {}px f{}{}".format(result["precision"], result["iterations_per_loop"], result["batch_size"],
                                           result["crop_size"], result["base_filters"],
                                           " C{}".format(classes) if classes != 1 else "")


def _bars(ax, results, modes, colors):
    """Grouped bars of median images/sec per config with min-max error bars; returns the config labels."""
    labels = []
    for result in results:
        if result["mode"] in modes and config_label(result) not in labels:
            labels.append(config_label(result))
    width = 0.8 / max(1, len(modes))
    for offset, mode in enumerate(modes):
        xs, heights, low, high = [], [], [], []
        for result in results:
            if result["mode"] != mode or "images_per_sec" not in result:
                continue
            figure = result["images_per_sec"]
            xs.append(labels.index(config_label(result)) + (offset - (len(modes) - 1) / 2.0) * width)
            heights.append(figure["median"])
            low.append(figure["median"] - figure["min"])
            high.append(figure["max"] - figure["median"])
        if xs:
            ax.bar(xs, heights, width, yerr=[low, high], capsize=3, label=mode, color=colors.get(mode))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("images/sec (median, min-max)")
    ax.legend()
    return labels


def plot_throughput(results, output_dir, title):
    """images_per_sec.png (every training config, model and e2e) and e2e_vs_model.png; returns written paths."""
    plt = _pyplot()
    if plt is None:
        print("matplotlib is not installed: skipping the plots (pip install matplotlib)")
        return []
    colors = {"model": "#4c72b0", "e2e": "#dd8452"}
    paths = []
    trained = [r for r in results if r["mode"] in ("model", "e2e") and "images_per_sec" in r]
    if trained:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(trained)), 4.5))
        _bars(ax, trained, [m for m in ("model", "e2e") if any(r["mode"] == m for r in trained)], colors)
        ax.set_title(title, fontsize=9)
        paths.append(_save(plt, fig, os.path.join(output_dir, "images_per_sec.png")))
    paired = [r for r in trained if r["mode"] == "e2e" and r.get("input_bound_share") is not None]
    if paired:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(paired)), 4.5))
        keys = [config_label(r) for r in paired]
        both = [r for r in trained if config_label(r) in keys]
        _bars(ax, both, ["model", "e2e"], colors)
        for index, result in enumerate(paired):
            ax.annotate("input-bound {:.0%}".format(result["input_bound_share"]),
                        (index, result["images_per_sec"]["max"]), ha="center", va="bottom", fontsize=7)
        ax.set_title("e2e vs model (compute ceiling)\n" + title, fontsize=9)
        paths.append(_save(plt, fig, os.path.join(output_dir, "e2e_vs_model.png")))
    return paths


def plot_loss_scale(report, output_dir):
    """loss_scale.png: log2 of the loss scale per step (overflows marked) with the fp16 and fp32 loss curves."""
    plt = _pyplot()
    if plt is None:
        print("matplotlib is not installed: skipping the loss-scale plot")
        return []
    series = report["per_step"]
    steps = series["step"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.step(steps, [math.log2(max(s, 1e-30)) for s in series["loss_scale"]], where="post", color="#4c72b0",
            label="log2 loss scale")
    marked = [(s, math.log2(max(v, 1e-30))) for s, v, o in zip(steps, series["loss_scale"], series["overflow"]) if o]
    if marked:
        ax.scatter([m[0] for m in marked], [m[1] for m in marked], color="red", marker="x", label="overflow")
    ax.set_xlabel("step")
    ax.set_ylabel("log2 loss scale")
    loss_ax = ax.twinx()
    loss_ax.plot(steps, series["fp16_loss"], color="#dd8452", label="fp16 loss")
    loss_ax.plot(steps, series["fp32_loss"], color="#55a868", linestyle="--", label="fp32 loss")
    loss_ax.set_ylabel("loss")
    handles = ax.get_legend_handles_labels()
    more = loss_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper right")
    ax.set_title("fp16 dynamic loss scaling vs fp32 ({} overflows, final scale {:g})".format(
        report["overflows"], report["final_scale"]), fontsize=9)
    return [_save(plt, fig, os.path.join(output_dir, "loss_scale.png"))]


def plot_accuracy_curves(results, path, title):
    """One PNG: V_rand (no TTA) at every validation, one line per seed (benchmarks/accuracy.py). Returns the path,
    or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    figure, ax = plt.subplots(figsize=(7, 4.5))
    for result in results:
        steps = [step for step, _ in result["curve"]]
        ax.plot(steps, [value for _, value in result["curve"]], marker="o", markersize=3,
                label="seed {}".format(result["seed"]))
    ax.set_xlabel("training step")
    ax.set_ylabel("V_rand, validation slices (no TTA)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, figure, path, dpi=110)


def _save(plt, fig, path, dpi=100):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

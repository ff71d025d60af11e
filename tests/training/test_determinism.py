"""--seed with --deterministic true on CPU: two runs in separate processes give bit-identical augmented batches
and identical per-step losses for the first 20 steps; another seed gives different ones (so the comparison can
fail); and a run stopped at step 10 and resumed gives the same losses as the uninterrupted run. Each process
runs this file's RUNNER script: training runs with K = 1 (one loss per step) and the first augmented batches of
the real pipeline."""
import json
import os
import subprocess
import sys

import pytest

from support import REPO

pytestmark = pytest.mark.slow  # two training processes of three runs each
STEPS = 20
ARGS = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4", "--synthetic_size",
        "64", "--iterations_per_loop", "1", "--save_checkpoints_steps", str(STEPS), "--max_steps", str(STEPS),
        "--summary_images", "0", "--deterministic", "true", "--learning_rate", "0.003"]

RUNNER = r'''
import hashlib, json, sys
from unet_perf.config import config_from_args
from unet_perf.data.loading import load_dataset
from unet_perf.training.run import train
from unet_perf.input import pipeline
from unet_perf.compat import v1

def batches(cfg, count):
    train_pairs, _, weights = load_dataset(cfg)
    with v1.Graph().as_default():
        v1.set_random_seed(cfg.seed)
        dataset = pipeline.make_dataset(train_pairs.images, train_pairs.masks, weights, cfg, seed=cfg.seed)
        iterator = pipeline.make_iterator(dataset)
        batch = iterator.get_next()
        with v1.Session() as sess:
            sess.run(iterator.initializer)
            values = [sess.run(batch) for _ in range(count)]
    return [[hashlib.sha256(part.tobytes()).hexdigest() for part in value] for value in values]

results = {}
for run in json.loads(sys.argv[1]):
    cfg = config_from_args(run["args"])
    summary = train(cfg, out=sys.stderr)
    results[run["name"]] = {"losses": [h["loss"] for h in summary["history"]],
                            "steps": [h["step"] for h in summary["history"]], "batches": batches(cfg, 3)}
print(json.dumps(results))
'''


def start(runs):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(runs)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def collect(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_same_seed_same_batches_and_losses_across_processes(tmp_path):
    def run(name, seed):
        return {"name": name, "args": ARGS + ["--seed", str(seed), "--model_dir", str(tmp_path / name)]}

    def resumed(name, steps):
        args = run("resumed", 7)["args"] + ["--max_steps", str(steps)]  # argparse: the last --max_steps wins
        return {"name": name, "args": args}

    # Two processes at once (the machine has 2 cores): A runs seed 7, then 10 steps + a resume to 20 in another
    # model dir; B runs seed 7, then seed 8 as the control.
    first = start([run("a7", 7), resumed("r10", STEPS // 2), resumed("r20", STEPS)])
    second = start([run("b7", 7), run("b8", 8)])
    a, b = collect(first), collect(second)
    a7, b7, b8 = a["a7"], b["b7"], b["b8"]
    assert a7["steps"] == list(range(1, STEPS + 1))
    assert a7["losses"] == b7["losses"]  # exact float equality, step by step
    assert a7["batches"] == b7["batches"]  # sha256 of every image/mask array: bit-identical
    assert len(set(h[0] for h in a7["batches"])) == 3  # the stream moves on: the batches differ
    assert b8["losses"] != b7["losses"]
    assert b8["batches"][0][0] != b7["batches"][0][0]
    # A run killed/stopped at step 10 and resumed continues exactly: same batches, dropout and optimizer state.
    assert a["r10"]["losses"] == a7["losses"][:STEPS // 2]
    assert a["r20"]["steps"] == list(range(STEPS // 2 + 1, STEPS + 1))
    assert a["r20"]["losses"] == a7["losses"][STEPS // 2:]

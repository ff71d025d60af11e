"""The way a Keras user predicts a large image today: the inference benchmark's baseline (b). Benchmark only.

The same U-Net as unet_perf.model.network, built from Keras layers (parameter count asserted equal), run with
model.predict on all tiles of the image at once (batch_size the same as the pipeline's) and stitched back in numpy
with a plain overlap average; TTA predicts the 8 flips/rotations of the tiles and averages them.

Run as a child of benchmarks/inference.py (Keras needs eager execution, which the unet_perf graphs turn off):

    python benchmarks/keras_baseline.py --spec spec.json

spec.json: {"image": scaled normalised float32 image (.npy), "tile", "overlap", "batch_size", "tta", "precision",
"depth", "base_filters", "num_classes", "expected_params", "repeats", "warmup_batches", "result": path of the result
JSON}. Weights are Keras' random initialisation: the speed does not depend on them.
"""
import argparse
import json
import os
import time

import numpy as np

DIHEDRAL = 8


def keras_unet(keras, depth, base_filters, num_classes, tile):
    """The raw-op U-Net of unet_perf.model.network (no batch norm; dropout is a no-op at inference) in Keras."""
    layers = keras.layers

    def conv(x, filters, kernel=3, activation="relu"):
        return layers.Conv2D(filters, kernel, padding="same", activation=activation)(x)

    inputs = keras.Input((tile, tile, 1))
    x, skips = inputs, []
    for level in range(depth):
        x = conv(conv(x, base_filters * 2 ** level), base_filters * 2 ** level)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = conv(conv(x, base_filters * 2 ** depth), base_filters * 2 ** depth)
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        x = conv(layers.UpSampling2D(2, interpolation="nearest")(x), filters, kernel=2)
        x = layers.Concatenate(axis=3)([skips[level], x])
        x = conv(conv(x, filters), filters)
    logits = conv(x, num_classes, kernel=1, activation=None)
    # The sigmoid/softmax in float32, as unet_perf's inference graph computes it.
    outputs = layers.Activation("sigmoid" if num_classes == 1 else "softmax", dtype="float32")(logits)
    return keras.Model(inputs, outputs)


def tile_starts(length, tile, stride):
    """Tile offsets covering [0, length): every stride, the last one flush with the end."""
    starts = list(range(0, max(length - tile, 0) + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def turn(tiles, k):
    """The k-th dihedral transform of a batch of tiles [N,T,T,C] (k%4 quarter turns, then a flip if k >= 4)."""
    out = np.rot90(tiles, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def unturn(tiles, k):
    """The inverse of turn(tiles, k)."""
    out = tiles[:, :, ::-1] if k >= 4 else tiles
    return np.rot90(out, -(k % 4), axes=(1, 2))


def predict_image(model, image, tile, overlap, batch_size, tta):
    """A Keras user's overlap-tile prediction: mirror-pad, cut every tile, model.predict, average the overlaps.
    Returns (probability [H,W,C], seconds spent in model.predict, tile count sent to the model)."""
    margin = overlap // 2
    padded = np.pad(image, margin, mode="reflect")
    height, width = padded.shape
    if min(height, width) < tile:
        padded = np.pad(padded, ((0, max(0, tile - height)), (0, max(0, tile - width))), mode="reflect")
        height, width = padded.shape
    corners = [(r, c) for r in tile_starts(height, tile, tile - overlap) for c in tile_starts(width, tile, tile - overlap)]
    tiles = np.stack([padded[r:r + tile, c:c + tile] for r, c in corners])[..., None]
    transforms = range(DIHEDRAL) if tta else [0]
    predict_seconds, probs = 0.0, 0.0
    for k in transforms:
        start = time.perf_counter()
        out = model.predict(np.ascontiguousarray(turn(tiles, k)), batch_size=batch_size, verbose=0)
        predict_seconds += time.perf_counter() - start
        probs = probs + unturn(np.asarray(out, np.float32), k)
    total = np.zeros((height, width, probs.shape[-1]), np.float32)
    count = np.zeros((height, width, 1), np.float32)
    for (r, c), prob in zip(corners, probs / len(transforms)):
        total[r:r + tile, c:c + tile] += prob
        count[r:r + tile, c:c + tile] += 1.0
    rows, cols = image.shape
    return (total / count)[margin:margin + rows, margin:margin + cols], predict_seconds, len(corners) * len(transforms)


def set_precision(keras, precision):
    """Keras' mixed-precision policy for fp32/bf16; returns None, or why this Keras cannot run `precision`."""
    if precision == "fp32":
        return None
    if precision != "bf16":
        return "the Keras baseline runs fp32 and bf16 only"
    policy = getattr(getattr(keras, "mixed_precision", None), "set_global_policy", None)
    if policy is None:
        return "this Keras has no mixed_precision.set_global_policy"
    policy("mixed_bfloat16")
    return None


def run(spec):
    """Time the Keras user's prediction of spec["image"]; the result dict (or {"skipped": reason})."""
    os.environ["KERAS_BACKEND"] = "tensorflow"  # a Keras 3 configured for JAX/PyTorch would measure those
    try:
        # The Keras package itself: what tf.keras resolves to on TF 2.16+ (Keras 3), and a benchmark-only
        # dependency (unet_perf itself has no Keras: tools/check_tf115.py).
        import keras
    except ImportError as err:
        return {"skipped": "Keras is not installed ({})".format(err)}
    reason = set_precision(keras, spec["precision"])
    if reason:
        return {"skipped": reason}
    model = keras_unet(keras, spec["depth"], spec["base_filters"], spec["num_classes"], spec["tile"])
    params = int(model.count_params())
    if params != spec["expected_params"]:
        raise AssertionError("the Keras U-Net has {} parameters, the unet_perf graph {}: not the same "
                             "architecture".format(params, spec["expected_params"]))
    image = np.load(spec["image"])
    warm = np.zeros((spec["batch_size"] * spec["warmup_batches"], spec["tile"], spec["tile"], 1), np.float32)
    model.predict(warm, batch_size=spec["batch_size"], verbose=0)  # traces the predict function
    seconds, predict_seconds, tiles = [], [], 0
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        _, in_predict, tiles = predict_image(model, image, spec["tile"], spec["overlap"], spec["batch_size"],
                                             spec["tta"])
        seconds.append(time.perf_counter() - start)
        predict_seconds.append(in_predict)
    return {"seconds": seconds, "predict_seconds": predict_seconds, "tiles": tiles, "params": params,
            "keras": "{} ({})".format(getattr(keras, "__version__", "unknown"), keras.backend.backend())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--spec", required=True, help="JSON file describing the run (see the module doc)")
    args = parser.parse_args(argv)
    with open(args.spec) as handle:
        spec = json.load(handle)
    result = run(spec)
    with open(spec["result"], "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()

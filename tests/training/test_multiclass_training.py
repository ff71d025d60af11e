"""Three classes through the whole trainer: a run stopped and resumed (with the EMA and auto class weights) ends with
the weights of the uninterrupted run, and a packed shard set of class maps
trains with the class shares and auto class weights of its folder."""
import dataclasses
import io
import os

import cv2
import numpy as np
import pytest

from support import make_tiny_config

pytestmark = pytest.mark.slow  # four short training runs
THREE_CLASSES = dict(num_classes=3, synthetic_count=4, synthetic_size=64, dropout=0.5, ema=0.9, loss="ce_dice",
                     class_weights="auto", iterations_per_loop=5, save_checkpoints_steps=5, deterministic=True,
                     summary_images=0, learning_rate=0.01, augment_engine="graph")


def train_quietly(cfg):
    from unet_perf.training.run import train

    out = io.StringIO()
    summary = train(cfg, out=out)
    assert summary["status"] == "finished", out.getvalue()
    return out.getvalue()


def checkpoint_values(model_dir, step):
    from unet_perf.compat import v1

    reader = v1.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-{}".format(step)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_resumed_three_class_run_equals_the_uninterrupted_one(tmp_path):
    straight = make_tiny_config(THREE_CLASSES, max_steps=10, model_dir=str(tmp_path / "straight"))
    log = train_quietly(straight)
    assert "class weights (median frequency of the training labels)" in log
    resumed_dir = str(tmp_path / "resumed")
    train_quietly(make_tiny_config(THREE_CLASSES, max_steps=5, model_dir=resumed_dir))
    train_quietly(make_tiny_config(THREE_CLASSES, max_steps=10, model_dir=resumed_dir))
    expected, got = checkpoint_values(straight.model_dir, 10), checkpoint_values(resumed_dir, 10)
    assert sorted(got) == sorted(expected)
    assert any(name.endswith("ExponentialMovingAverage") for name in got)
    assert expected["unet/logits/kernel"].shape[-1] == 3
    start = checkpoint_values(resumed_dir, 5)
    assert np.abs(start["unet/logits/kernel"] - expected["unet/logits/kernel"]).max() > 1e-4  # it trained on
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_packed_class_maps_train_with_the_folders_class_weights(tmp_path):
    from unet_perf.data.pack import pack
    from unet_perf.data.synthetic import organelles

    pairs = organelles(4, 64, seed=3, num_classes=3)
    for folder, arrays in (("image", pairs.images), ("label", pairs.masks)):
        os.makedirs(str(tmp_path / "data" / folder))
        for index, array in enumerate(arrays):
            cv2.imwrite(str(tmp_path / "data" / folder / "{}.png".format(index)), array)
    manifest = pack(str(tmp_path / "data"), str(tmp_path / "shards"), num_classes=3, progress_stream=io.StringIO())
    assert manifest["num_classes"] == 3
    cfg = make_tiny_config(THREE_CLASSES, ema=0.0, max_steps=5, augment=False, input_scale=1.0,
                           data_path=str(tmp_path / "shards"), model_dir=str(tmp_path / "run"))
    log = train_quietly(cfg)
    shares = [line for line in log.splitlines() if line.startswith("data: ")][0]
    assert "classes 0 " in shares and " 2 " in shares  # the class shares, read from the manifest
    # auto weights from the manifest's class counts are the ones computed from the folder's labels
    from unet_perf.data.loading import class_weights_for, load_dataset
    folder = dataclasses.replace(cfg, data_path=str(tmp_path / "data"))
    expected = class_weights_for(folder, load_dataset(folder)[0])
    assert [line for line in log.splitlines() if line.startswith("class weights")] == [
        "class weights (median frequency of the training labels): " + " ".join("{:.3f}".format(w) for w in expected)]

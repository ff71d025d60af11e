"""Packed shard sets: pack (folders and TIFF volumes, sizes may differ, atomic), the manifest checks (truncated,
corrupted, skipped), and the streaming training dataset (static shapes, every slice once per epoch, worker
shares, determinism, exact resume, weights)."""
import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from support import take_batches
from unet_perf import errors
from unet_perf.input import pipeline
from unet_perf.compat import v1
from unet_perf.config import Config
from unet_perf.data import classes, loading, pack, shard_format, shard_reader, shard_stream
from unet_perf.data.loading import load_dataset
from unet_perf.data.sources import load_pairs
from unet_perf.data.weights import border_weight_map
from unet_perf.errors import UserError

SIDE = 32


def write_folder(root, sizes, offset=0):
    """image/ + label/ PNG pairs; slice i is filled with the value 10 * (i + offset + 1) (its identity) and has
    a random binary label."""
    rng = np.random.RandomState(len(sizes))
    for sub in ("image", "label"):
        os.makedirs(os.path.join(str(root), sub), exist_ok=True)
    for index, (height, width) in enumerate(sizes):
        image = np.full((height, width), 10 * (index + offset + 1), np.uint8)
        label = (rng.rand(height, width) > 0.5).astype(np.uint8) * 255
        cv2.imwrite(os.path.join(str(root), "image", "{}.png".format(index)), image)
        cv2.imwrite(os.path.join(str(root), "label", "{}.png".format(index)), label)
    return str(root)


def packed(tmp_path, count=8, shard_mb=0.004, sizes=None, **options):
    source = write_folder(tmp_path / "src", sizes or [(SIDE, SIDE)] * count)
    output = str(tmp_path / "shards")
    pack.pack(source, output, shard_mb=shard_mb, **options)
    return source, output


def make_cfg(data_path, **overrides):
    base = dict(data_path=data_path, batch_size=2, crop_size=SIDE, input_scale=1.0, augment=False,
                augment_engine="opencv", data_threads=1, seed=3)
    base.update(overrides)
    return dataclasses.replace(Config(), **base)


def take(cfg, count, start_batch=0, worker_index=0, num_workers=1):
    train, _, weights = load_dataset(cfg)
    with v1.Graph().as_default():
        # make_dataset streams a shard set through make_shard_dataset
        return take_batches(pipeline.make_dataset(train.images, train.masks, weights, cfg, start_batch=start_batch,
                                                  worker_index=worker_index, num_workers=num_workers), count)


def identities(batches):
    """Slice identity (its fill value / 10 - 1) of every sample, in stream order."""
    return [int(round(value * 255 / 10.0)) - 1 for batch in batches for value in batch[0][:, 0, 0, 0]]


def test_pack_round_trip_sizes_and_atomic_names(tmp_path):
    sizes = [(SIDE, SIDE), (40, 36), (SIDE, 48), (36, 40), (SIDE, SIDE)]
    source, output = packed(tmp_path, sizes=sizes, shard_mb=0.006)
    manifest = json.load(open(os.path.join(output, shard_format.MANIFEST)))
    assert manifest["slices"] == 5 and len(manifest["shards"]) > 1
    assert sorted(os.listdir(output)) == sorted([shard_format.MANIFEST] + [e["file"] for e in manifest["shards"]])
    shard_set = shard_reader.open_shard_set(output)
    assert shard_set.min_size == (SIDE, SIDE) and len(shard_set) == 5
    for index, (height, width) in enumerate(sizes):
        image, mask, weights, _ = shard_set.read(index)
        assert image.shape == (height, width) and weights is None
        np.testing.assert_array_equal(image, cv2.imread(os.path.join(source, "image", "{}.png".format(index)), 0))
        np.testing.assert_array_equal(mask, cv2.imread(os.path.join(source, "label", "{}.png".format(index)), 0) > 0)


def test_pack_reads_tiff_volumes_page_by_page(tmp_path):
    rng = np.random.RandomState(0)
    volume = [rng.randint(0, 256, (24, 20)).astype(np.uint8) for _ in range(3)]
    labels = [(rng.rand(24, 20) > 0.5).astype(np.uint8) * 255 for _ in range(3)]
    os.makedirs(str(tmp_path / "vol"))
    cv2.imwritemulti(str(tmp_path / "vol" / "train-volume.tif"), volume)
    cv2.imwritemulti(str(tmp_path / "vol" / "train-labels.tif"), labels)
    pack.pack(str(tmp_path / "vol"), str(tmp_path / "out"))
    shard_set = shard_reader.open_shard_set(str(tmp_path / "out"))
    reference = load_pairs(str(tmp_path / "vol"))
    for index in range(3):
        np.testing.assert_array_equal(shard_set.read(index)[0], reference.images[index])
        np.testing.assert_array_equal(shard_set.read(index)[1], reference.masks[index])


def test_interrupted_pack_leaves_nothing_behind(tmp_path):
    source = write_folder(tmp_path / "src", [(SIDE, SIDE)] * 6)
    with open(os.path.join(source, "image", "4.png"), "wb") as handle:
        handle.write(b"not a png")
    output = str(tmp_path / "out" / "set")
    with pytest.raises(UserError, match="4.png"):
        pack.pack(source, output, shard_mb=0.003)  # fails after complete shards were written
    assert not os.path.exists(str(tmp_path / "out"))  # the folders this run created are gone too
    os.makedirs(output)
    with pytest.raises(UserError, match="4.png"):
        pack.pack(source, output, shard_mb=0.003)
    assert os.listdir(output) == []  # a folder that existed before stays, empty as it was
    with pytest.raises(UserError):
        load_dataset(make_cfg(output))


def test_failed_overwrite_keeps_the_previous_shard_set(tmp_path):
    source, output = packed(tmp_path, count=4)
    before = {name: open(os.path.join(output, name), "rb").read() for name in os.listdir(output)}
    with pytest.raises(UserError, match="not empty"):
        pack.pack(source, output)
    with open(os.path.join(source, "image", "2.png"), "wb") as handle:
        handle.write(b"not a png")
    with pytest.raises(UserError, match="2.png"):
        pack.pack(source, output, shard_mb=0.003, overwrite=True)
    assert {name: open(os.path.join(output, name), "rb").read() for name in os.listdir(output)} == before
    assert len(shard_reader.open_shard_set(output)) == 4


def test_pack_overwrite_replaces_only_its_own_files(tmp_path, capsys):
    from unet_perf.errors import run_cli
    source, output = packed(tmp_path, count=4)
    with pytest.raises(SystemExit) as stop:
        run_cli(pack.main, ["--data_path", source, "--output", output, "--overwrite", "--shard_mb", "1"])
    assert stop.value.code == 0
    assert sorted(os.listdir(output)) == [shard_format.MANIFEST, shard_format.shard_name(0)]  # old shards replaced
    open(os.path.join(output, "notes.txt"), "w").close()
    with pytest.raises(UserError, match="notes.txt"):
        pack.pack(source, output, overwrite=True)


def test_pack_cli_exits_2_on_user_errors(tmp_path, capsys):
    from unet_perf.errors import run_cli
    with pytest.raises(SystemExit) as stop:
        run_cli(pack.main, ["--data_path", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
    assert stop.value.code == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_shard_is_a_user_error_or_skipped(tmp_path, damage):
    _, output = packed(tmp_path, count=8)
    manifest = json.load(open(os.path.join(output, shard_format.MANIFEST)))
    victim = os.path.join(output, manifest["shards"][1]["file"])
    data = bytearray(open(victim, "rb").read())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x55
    open(victim, "wb").write(bytes(data))
    with pytest.raises(UserError, match=os.path.basename(victim)):
        load_dataset(make_cfg(output))
    with pytest.warns(UserWarning, match=os.path.basename(victim)):
        train, _, _ = load_dataset(make_cfg(output, skip_bad_shards=True))
    assert len(train) == 8 - manifest["shards"][1]["slices"]
    seen = set(identities(take(make_cfg(output, skip_bad_shards=True), 6)))
    assert seen and not seen & {index for index in range(8) if index // manifest["shards"][0]["slices"] == 1}


def test_unverified_corruption_stops_at_the_first_read_of_the_shard(tmp_path, capsys):
    _, output = packed(tmp_path, count=4, shard_mb=100)
    victim = os.path.join(output, "shard-00000.tfrecord")
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x55
    open(victim, "wb").write(bytes(data))
    load_dataset(make_cfg(output, verify_shards=False))  # no CRC pass before training: a fast start
    with pytest.raises(tf.errors.OpError) as stop:
        take(make_cfg(output, verify_shards=False), 1)
    assert errors.relayed_user_error(stop.value).startswith("shard {} is corrupted".format(victim))
    # the CLI wrapper turns the error TensorFlow relays from the reader into one line and exit 2
    with pytest.raises(SystemExit) as exit_:
        errors.run_cli(lambda argv: take(make_cfg(output, verify_shards=False), 1), [])
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("error: shard {} is corrupted".format(victim))


def test_a_shard_cut_short_after_opening_is_an_error_naming_it(tmp_path):
    _, output = packed(tmp_path, count=4, shard_mb=100)
    shard_set = shard_reader.open_shard_set(output)
    victim = os.path.join(output, "shard-00000.tfrecord")
    with open(victim, "r+b") as handle:
        handle.truncate(os.path.getsize(victim) // 2)
    with pytest.raises(UserError, match="shard {} ended".format(victim)):
        shard_set.read(3)


def test_tiles_are_read_by_offset_exactly_as_cut_from_the_slice(tmp_path):
    sizes = [(48, 40), (40, 56), (SIDE, SIDE), (64, 64)]
    source, output = packed(tmp_path, sizes=sizes, shard_mb=0.01, weight_map=True)
    shard_set = shard_reader.open_shard_set(output)
    rng = np.random.RandomState(0)
    for index, (height, width) in enumerate(sizes):
        mask = cv2.imread(os.path.join(source, "label", "{}.png".format(index)), 0) > 0
        weights = border_weight_map(mask.astype(np.uint8))
        for rows, cols in ((height, width), (20, width), (height, 24), (17, 9)):
            top, left = rng.randint(0, height - rows + 1), rng.randint(0, width - cols + 1)
            np.testing.assert_array_equal(shard_set.read_window(index, 1, top, left, rows, cols),
                                          mask[top:top + rows, left:left + cols])
            np.testing.assert_allclose(shard_set.read_window(index, 2, top, left, rows, cols),
                                       weights[top:top + rows, left:left + cols], rtol=1e-6)


@pytest.mark.parametrize("buffer_size", [0, 5])
def test_epoch_order_is_a_seeded_permutation_and_a_small_buffer_keeps_reads_local(buffer_size):
    shares = [np.arange(start, start + 10, dtype=np.int64) for start in range(0, 60, 10)]
    order = shard_stream.epoch_order(shares, buffer_size, seed=3, epoch=1)
    assert sorted(order) == list(range(60))
    np.testing.assert_array_equal(order, shard_stream.epoch_order(shares, buffer_size, seed=3, epoch=1))
    assert not np.array_equal(order, shard_stream.epoch_order(shares, buffer_size, seed=3, epoch=2))
    if buffer_size:
        # with the same draws, the round-robin stream the buffer shuffles: nothing leaves more than buffer_size early
        rng = np.random.RandomState([3, 1, 0x5EED])
        stream = shard_stream._round_robin([shares[i] for i in rng.permutation(len(shares))], shard_stream._CYCLE)
        assert len({value // 10 for value in stream[:4 * 10]}) == 4
        position = {value: place for place, value in enumerate(order)}
        assert all(position[value] >= place - buffer_size for place, value in enumerate(stream))


def test_stream_has_static_shapes_and_every_slice_once_per_epoch(tmp_path):
    _, output = packed(tmp_path, count=8)
    batches = take(make_cfg(output), 8)  # two epochs of 8 slices
    for image, mask in batches:
        assert image.shape == (2, SIDE, SIDE, 1) and mask.shape == (2, SIDE, SIDE, 1)
        assert set(np.unique(mask)) <= {0.0, 1.0}
    order = identities(batches)
    assert sorted(order[:8]) == list(range(8)) and sorted(order[8:]) == list(range(8))
    assert order[:8] != order[8:]  # each epoch has its own order


def test_stream_is_deterministic_and_resume_continues_it(tmp_path):
    _, output = packed(tmp_path, count=6)
    cfg = make_cfg(output, augment=True, crop_size=16)
    full = take(cfg, 7)
    again = take(cfg, 7)
    resumed = take(cfg, 3, start_batch=4)  # crosses the epoch boundary (3 batches per epoch)
    for first, second in zip(full, again):
        np.testing.assert_array_equal(first[0], second[0])
    for first, second in zip(full[4:], resumed):
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
    other = take(make_cfg(output, augment=True, crop_size=16, seed=4), 1)
    assert not np.array_equal(full[0][0], other[0][0])


@pytest.mark.parametrize("shard_mb", [0.004, 100])  # 4 shards (whole shards per worker) or 1 (every 2nd record)
def test_workers_read_disjoint_shares_that_cover_the_set(tmp_path, shard_mb):
    _, output = packed(tmp_path, count=8, shard_mb=shard_mb)
    cfg = make_cfg(output)
    shares = [identities(take(cfg, 2, worker_index=w, num_workers=2)) for w in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(8))


def test_tiles_come_from_one_place_of_larger_slices_and_weights_follow(tmp_path):
    _, output = packed(tmp_path, sizes=[(48, 40), (40, 56), (SIDE, SIDE), (64, 64)], weight_map=True)
    cfg = make_cfg(output, weight_map=True)
    train, _, weights = load_dataset(cfg)
    assert weights is not None
    for image, mask, weight in take(cfg, 4):
        for sample in range(2):
            assert np.unique(image[sample]).size == 1  # one slice per tile
            identity = int(round(image[sample, 0, 0, 0] * 255 / 10.0)) - 1
            full_mask = train.masks[identity]
            full_weight = border_weight_map(full_mask)
            tile = mask[sample, :, :, 0].astype(np.uint8)
            places = [(top, left) for top in range(full_mask.shape[0] - SIDE + 1)
                      for left in range(full_mask.shape[1] - SIDE + 1)
                      if np.array_equal(full_mask[top:top + SIDE, left:left + SIDE], tile)]
            assert places
            top, left = places[0]
            np.testing.assert_allclose(weight[sample, :, :, 0], full_weight[top:top + SIDE, left:left + SIDE],
                                       rtol=1e-5)


def test_shard_user_errors(tmp_path):
    _, output = packed(tmp_path, count=4)
    with pytest.raises(UserError, match="--val_split"):
        load_dataset(make_cfg(output, val_split="0"))
    with pytest.raises(UserError, match="weight maps"):
        load_dataset(make_cfg(output, weight_map=True))
    with pytest.raises(UserError, match="--batch_size"):
        load_dataset(make_cfg(output, batch_size=5))
    with pytest.raises(UserError, match="--crop_size"):
        load_dataset(make_cfg(output, crop_size=64))


def test_resume_continues_each_workers_stream(tmp_path):
    _, output = packed(tmp_path, count=8, shard_mb=100)  # one shard: record-level shares
    cfg = make_cfg(output, augment=True, crop_size=16)
    full = take(cfg, 5, worker_index=1, num_workers=2)
    resumed = take(cfg, 2, start_batch=3, worker_index=1, num_workers=2)
    for first, second in zip(full[3:], resumed):
        np.testing.assert_array_equal(first[0], second[0])
    other_worker = take(cfg, 1, worker_index=0, num_workers=2)
    assert not np.array_equal(full[0][0], other_worker[0][0])


def test_tile_extent_holds_every_sampled_position():
    from unet_perf.input import geometry
    from unet_perf.input.draws import draw
    cfg = dataclasses.replace(Config(), crop_size=32, input_scale=0.5, rotate_deg=40.0, scale_range=0.3, shear=0.1,
                              translate=0.2, elastic=False)
    draws = draw(cfg, 256, (32, 32), tf.constant([0, 1], tf.int64))
    x, y = geometry.coordinate_map(cfg, (500, 500), (32, 32), draws)
    with v1.Session() as sess:
        x, y = sess.run([x, y])
    spread = max((x.max(axis=(1, 2)) - x.min(axis=(1, 2))).max(), (y.max(axis=(1, 2)) - y.min(axis=(1, 2))).max())
    assert spread + 2 <= geometry.source_extent(cfg) < 2 * spread


# --- classes (issue 21) -----------------------------------------------------------------------------------------

def test_pack_keeps_class_maps_and_records_the_classes(tmp_path):
    rng = np.random.RandomState(0)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255], [255, 255, 255]], np.uint8)  # last: unlabelled
    source = write_folder(tmp_path / "src", [(SIDE, SIDE)] * 3)
    labels = [rng.randint(0, 4, (SIDE, SIDE)).astype(np.uint8) for _ in range(3)]
    labels[2][labels[2] == 2] = 1  # class 2 absent from one slice
    for index, label in enumerate(labels):
        cv2.imwrite(os.path.join(source, "label", "{}.png".format(index)), colours[label][:, :, ::-1])
    output = str(tmp_path / "shards")
    flags = ["--num_classes", "3", "--class_colors", "0,0,0;255,0,0;0,0,255;255,255,255", "--ignore_index", "3"]
    assert pack.main(["--data_path", source, "--output", output, "--shard_mb", "0.004"] + flags) == 0
    shard_set = shard_reader.open_shard_set(output)
    expected = [np.where(label == 3, 255, label) for label in labels]
    for index in range(3):
        np.testing.assert_array_equal(shard_set.masks[index], expected[index])
    manifest = shard_set.manifest
    assert (manifest["num_classes"], manifest["class_colors"], manifest["ignore_index"]) == (3, colours.tolist(), 3)
    assert manifest["class_pixels"] == [int(sum((label == c).sum() for label in labels)) for c in range(3)]
    labelled = [int((label != 3).sum()) for label in labels]
    assert manifest["class_image_pixels"] == [sum(labelled), sum(labelled), sum(labelled[:2])]
    cfg = make_cfg(output, num_classes=3, class_weights="auto")
    train, _, _ = load_dataset(cfg)
    np.testing.assert_allclose(loading.class_weights_for(cfg, train),
                               classes.median_frequency_weights(expected, 3))
    with pytest.raises(UserError, match="shards was packed with --num_classes 3 but training has --num_classes 2"):
        load_dataset(make_cfg(output, num_classes=2))


def test_a_manifest_without_num_classes_is_the_membrane_task(tmp_path):
    _, output = packed(tmp_path, count=2)
    path = os.path.join(output, shard_format.MANIFEST)
    with open(path) as handle:
        manifest = json.load(handle)
    assert manifest.pop("num_classes") == 1 and manifest["class_pixels"] is None
    with open(path, "w") as handle:
        json.dump(manifest, handle)
    assert len(load_dataset(make_cfg(output))[0]) == 2
    with pytest.raises(UserError, match="--num_classes 1 but training has --num_classes 3"):
        load_dataset(make_cfg(output, num_classes=3))

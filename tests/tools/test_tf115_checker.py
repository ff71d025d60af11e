"""tools/check_tf115.py and its tf115check package: the static TF 1.15 / npu_bridge API check, with the API
listings shipped in tools/tf115check/data; planted violations prove it catches what it must."""
import os
import subprocess
import sys
import textwrap

import pytest

import tf115check
from support import REPO, SHARED_COMPAT

TOOL = os.path.join(REPO, "tools", "check_tf115.py")
SHIPPED = ("unet_perf", "benchmarks", "tools")


@pytest.fixture(scope="module")
def listings():
    return tf115check.load_listings()


@pytest.fixture
def check(tmp_path, listings):
    """check(source, name="snippet.py", root=REPO) -> [(line, name, reason)] for one dedented snippet."""

    def run(source, name="snippet.py", root=REPO):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        checker = tf115check.Checker(listings[0], listings[1], root)
        checker.check_file(str(path))
        run.checker = checker
        return [(line, found, reason) for _, line, found, reason in checker.violations]

    return run


def _lines(violations):
    return sorted(line for line, _, _ in violations)


# ------------------------------------------------------------------------------------------- the real tree
def test_shipped_code_passes_the_checker():
    """The README's command, from the repository root, with the listings the repository ships."""
    result = subprocess.run([sys.executable, TOOL], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": no violations")
    assert result.stdout.startswith("checked ")
    checked = int(result.stdout.split()[1])
    assert checked >= len([name for name in os.listdir(os.path.join(REPO, "unet_perf")) if name.endswith(".py")])


def test_listings_ship_in_the_repository_under_one_mib_each():
    names = sorted(os.listdir(tf115check.DATA_DIR))
    assert {"tf115_api.txt", "tf115_signatures.txt.gz", "npu_bridge_api.txt"} <= set(names)
    for name in names:
        assert os.path.getsize(os.path.join(tf115check.DATA_DIR, name)) < 2 ** 20, name


@pytest.mark.skipif(not os.path.isdir(SHARED_COMPAT), reason="no shared compat folder next to the repository")
def test_shipped_listings_equal_the_shared_originals(listings):
    shared_tf, shared_npu = tf115check.load_listings(SHARED_COMPAT)
    shipped_tf, shipped_npu = listings
    assert shipped_tf.names == shared_tf.names and len(shipped_tf.names) > 5000
    assert {name: sig.text for name, sig in shipped_tf.signatures.items()} == {
        name: sig.text for name, sig in shared_tf.signatures.items()}
    assert {name: sig.text for name, sig in shipped_npu.signatures.items()} == {
        name: sig.text for name, sig in shared_npu.signatures.items()}
    assert shipped_npu.reexports == shared_npu.reexports and shipped_npu.classes == shared_npu.classes


# ------------------------------------------------------------------------------------------- planted violations
def test_tf_data_autotune_is_caught(check):
    found = check("""\
        import tensorflow as tf

        ds = tf.data.Dataset.range(8)
        ds = ds.map(lambda x: x, num_parallel_calls=tf.data.AUTOTUNE)
        """)
    assert [(line, name) for line, name, _ in found] == [(4, "tf.data.AUTOTUNE")]


def test_dataset_map_deterministic_is_caught_on_every_receiver(check):
    found = check("""\
        import tensorflow as tf
        from unet_perf.compat import AUTOTUNE, v1


        def build(images):
            ds = tf.data.Dataset.from_tensor_slices(images)
            ds = ds.shuffle(16, seed=1).repeat()
            ds = ds.map(lambda x: x * 2, num_parallel_calls=AUTOTUNE,
                        deterministic=False)
            chained = v1.data.Dataset.range(4).batch(2, drop_remainder=True).map(
                lambda x: x, deterministic=True)
            return ds, chained


        def untracked(dataset):
            return dataset.interleave(lambda x: x, cycle_length=2, deterministic=False)
        """)
    assert _lines(found) == [9, 11, 16]
    assert all("deterministic" in name for _, name, _ in found)
    assert "tf.data.Dataset.map" in dict((line, reason) for line, _, reason in found)[9]


def test_compat_v1_layers_is_caught_as_keras_backed(check):
    found = check("""\
        import tensorflow as tf

        def head(x):
            y = tf.nn.relu(x)
            return tf.compat.v1.layers.conv2d(y, 8, 3)
        """)
    assert [(line, name) for line, name, _ in found] == [(5, "tf.compat.v1.layers")]
    assert "Keras" in found[0][2]


def test_misspelled_npu_bridge_name_is_caught_with_a_suggestion(check):
    found = check("""\
        import os
        from npu_bridge.estimator.npu.util import set_iterations_per_loop
        """)
    assert [(line, name) for line, name, _ in found] == [
        (2, "npu_bridge.estimator.npu.util.set_iterations_per_loop")]
    assert "set_iteration_per_loop?" in found[0][2]


def test_misspelled_npu_bridge_module_is_caught(check):
    found = check("from npu_bridge.estimator.npu.utils import set_iteration_per_loop\n")
    assert [(line, name) for line, name, _ in found] == [(1, "npu_bridge.estimator.npu.utils")]


def test_wrong_npu_bridge_keyword_is_caught(check):
    found = check("""\
        from npu_bridge.estimator.npu import util
        from npu_bridge.estimator.npu.util import set_iteration_per_loop


        def prepare(sess, op):
            util.set_iteration_per_loop(sess, op, iterations_per_loop=10)
            return set_iteration_per_loop(sess, op,
                                          iterations=10)
        """)
    assert [(line, name) for line, name, _ in found] == [(8, "set_iteration_per_loop(iterations=...)")]
    assert "iterations_per_loop=1" in found[0][2]


def test_npu_star_import_names_are_checked(check):
    found = check("""\
        from npu_bridge.npu_init import *

        config = NPURunConfig(iterations_per_loop=10, precision_mode="allow_mix_precision")
        bad = NPURunConfig(iteration_per_loop=10)
        """)
    assert [(line, name) for line, name, _ in found] == [(4, "NPURunConfig(iteration_per_loop=...)")]


def test_raw_image_projective_transform_v3_is_caught(check):
    found = check("""\
        import tensorflow as tf

        def warp(images, transforms, shape):
            return tf.raw_ops.ImageProjectiveTransformV3(
                images=images, transforms=transforms, output_shape=shape, fill_value=0.0,
                interpolation="BILINEAR")
        """)
    assert [(line, name) for line, name, _ in found] == [(4, "tf.raw_ops.ImageProjectiveTransformV3")]


def test_wrong_conv_keywords_are_caught_through_a_v1_alias(check):
    """v1 convs call the kernel `filter`; TF 2.x's root tf.nn.conv2d calls it `filters`.

    1.15's v1 nn.conv2d also accepts `filters=` (listed: `..., name=None, filters=None)`), so that one is valid.
    """
    found = check("""\
        import tensorflow as tf

        v1 = tf.compat.v1


        def convs(x, w, dw):
            a = v1.nn.conv2d(x, filters=w, strides=[1, 1, 1, 1], padding="SAME")
            b = v1.nn.depthwise_conv2d(x, filters=dw, strides=[1, 1, 1, 1], padding="SAME")
            c = tf.nn.conv2d(x, filter=w, strides=[1, 1, 1, 1], padding="SAME")
            return a, b, c
        """)
    assert [(line, name) for line, name, _ in found] == [
        (8, "v1.nn.depthwise_conv2d(filters=...)"), (9, "tf.nn.conv2d(filter=...)")]
    assert "tf.compat.v1.nn.depthwise_conv2d" in found[0][2]
    assert "TF 2.x" in found[1][2]


def test_tf1_only_root_names_are_caught(check):
    found = check("""\
        import tensorflow as tf

        x = tf.placeholder(tf.float32, [1])
        trace = tf.profiler
        sess = tf.compat.v1.Session()
        """)
    assert [(line, name) for line, name, _ in found] == [(3, "tf.placeholder")]
    assert "tf.compat.v1.placeholder" in found[0][2]


def test_too_many_positional_arguments_are_caught(check):
    found = check("""\
        import tensorflow as tf

        y = tf.nn.relu(1.0, "relu", "extra")
        """)
    assert [(line, name) for line, name, _ in found] == [(3, "tf.nn.relu")]


def test_options_attributes_are_checked_through_a_local_alias(check):
    found = check("""\
        import tensorflow as tf


        def options():
            opts = tf.data.Options()
            opts.experimental_threading.private_threadpool_size = 4
            opts.experimental_threading.max_intra_op_parallelism = 1
            opts.experimental_deterministic = True
            opts.threading.private_threadpool_size = 4
            opts.experimental_threading.privat_threadpool_size = 4
            return opts
        """)
    assert [(line, name) for line, name, _ in found] == [
        (9, "opts.threading"), (10, "opts.experimental_threading.privat_threadpool_size")]
    assert "did you mean" in found[1][2]


def test_graph_keys_constants_are_checked(check):
    found = check("""\
        from unet_perf.compat import v1

        ops = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        bad = v1.get_collection(v1.GraphKeys.UPDATE_OP)
        """)
    assert [(line, name) for line, name, _ in found] == [(4, "v1.GraphKeys.UPDATE_OP")]


def test_repo_aliases_resolve_across_modules(check):
    """`from unet_perf.compat import v1` and `compat.v1` resolve through unet_perf/compat.py's own aliases."""
    found = check("""\
        from unet_perf import compat
        from unet_perf.compat import v1 as tfv1

        a = tfv1.layers.dense
        b = compat.v1.keras
        c = compat.v1.nn.relu
        """)
    assert _lines(found) == [4, 5]


def test_proto_modules_private_modules_and_keras_imports(check):
    found = check("""\
        from tensorflow.core.protobuf import rewriter_config_pb2
        from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig
        from tensorflow.core.framework import graph_pb2
        from tensorflow.python.ops import array_ops
        from tensorflow import keras
        import tensorflow.compat.v1 as tf1

        off = RewriterConfig.OFF
        mode = rewriter_config_pb2.RewriterConfig.ON
        config = tf1.ConfigProto(allow_soft_placement=True)
        """)
    assert _lines(found) == [3, 4, 5]
    reasons = dict((line, reason) for line, _, reason in found)
    assert "proto module" in reasons[3] and "private" in reasons[4] and "Keras" in reasons[5]


# ------------------------------------------------------------------------------------------- no false positives
def test_realistic_code_is_not_flagged(check):
    found = check("""\
        import tensorflow as tf
        from npu_bridge.estimator.npu.npu_config import NPURunConfig
        from unet_perf.compat import AUTOTUNE, v1


        def conv(x, name):
            with v1.variable_scope(name, reuse=v1.AUTO_REUSE):
                w = v1.get_variable("w", [3, 3, 1, 8], tf.float32,
                                    v1.variance_scaling_initializer(2.0, "fan_in", "truncated_normal"),
                                    use_resource=True)
                y = tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME")
                y = tf.nn.max_pool2d(y, [1, 2, 2, 1], [1, 2, 2, 1], "VALID")
                return tf.image.resize(y, [8, 8], method="bilinear")


        def pipeline(images, seed):
            ds = tf.data.Dataset.from_tensor_slices(images).cache()
            ds = ds.shuffle(64, seed=seed, reshuffle_each_iteration=True).repeat()
            ds = ds.batch(4, drop_remainder=True)
            ds = ds.map(lambda x: x, num_parallel_calls=tf.data.experimental.AUTOTUNE)
            ds = ds.prefetch(AUTOTUNE)
            options = tf.data.Options()
            options.experimental_deterministic = True
            ds = ds.with_options(options)
            iterator = v1.data.make_initializable_iterator(ds)
            return iterator.get_next(), iterator.initializer


        def train(loss):
            step = v1.train.get_or_create_global_step()
            opt = v1.train.AdamOptimizer(1e-4)
            train_op = opt.minimize(loss, global_step=step)
            updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
            config = v1.ConfigProto(allow_soft_placement=True)
            run_config = NPURunConfig(iterations_per_loop=10, save_checkpoints_steps=100)
            with v1.Session(config=config) as sess:
                sess.run(v1.global_variables_initializer())
                saver = v1.train.Saver(max_to_keep=3)
                saver.save(sess, "/tmp/model", global_step=step)
            return train_op, updates, run_config, tf.__version__
        """)
    assert found == []
    assert check.checker.tf_references > 30
    assert check.checker.npu_references >= 2


# ------------------------------------------------------------------------------------------- TF-2-only markers
MARKED_COMPAT = """\
import tensorflow as tf

IS_TF2 = True


def trace(logdir):
    tf.profiler.experimental.start(logdir)  # TF-2-only: tf.profiler.experimental is 2.x-only, guarded by caller
    tf.profiler.experimental.stop()


def threading(options):
    if IS_TF2:  # TF-2-only: tf.data.AUTOTUNE exists from 2.3
        value = tf.data.AUTOTUNE
    else:
        value = tf.data.AUTOTUNE
    tf.data.AUTOTUNE  # TF-2-only:
    return value
"""


def test_tf2_only_marker_is_honoured_only_in_compat_py(check, tmp_path):
    root = tmp_path / "repo"
    found = check(MARKED_COMPAT, name="repo/unet_perf/compat.py", root=str(root))
    assert _lines(found) == [8, 15, 16]  # unmarked line, the else branch, a marker without a reason
    assert check.checker.allowlisted_lines == 3  # line 7, the `if` line and its one-line body
    assert "allow-listed" in check.checker.summary()

    found_elsewhere = check(MARKED_COMPAT, name="repo/unet_perf/model/network.py", root=str(root))
    assert _lines(found_elsewhere) == [7, 8, 13, 15, 16]


# ------------------------------------------------------------------------------------------- CLI
def test_cli_exit_codes_and_output_format(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorflow as tf\n\nx = tf.data.AUTOTUNE\n")
    good = tmp_path / "good.py"
    good.write_text("import tensorflow as tf\n\nx = tf.data.experimental.AUTOTUNE\n")

    assert tf115check.main([str(good)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == "checked 1 files, 2 TensorFlow references, 0 npu_bridge references: no violations"

    assert tf115check.main([str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].endswith("bad.py:3: tf.data.AUTOTUNE (not in the TF 1.15 API)")
    assert "1 violations" in captured.err


def test_cli_missing_listings_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "x.py").write_text("import tensorflow as tf\n")
    assert tf115check.main(["--compat_dir", str(tmp_path / "nowhere"), str(tmp_path / "x.py")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: API listing not found") and "--compat_dir" in err
    assert len(err.splitlines()) == 1

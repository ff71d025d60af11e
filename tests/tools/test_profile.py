"""tools/profile.sh: a 2-step profile of a tiny config leaves a parsable Chrome trace, op table and TensorBoard files;
tools/profile_run.py's Ascend profiling options, result folders and msprof export message."""
import csv
import glob
import json
import os
import subprocess
import sys

import pytest

from unet_perf.compat import v1

from support import NPU_STUB, REPO

TOOLS = os.path.join(REPO, "tools")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import profile_run  # noqa: E402

TINY = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--batch_size", "2", "--synthetic_count", "4",
        "--synthetic_size", "64"]


def test_profile_sh_two_steps_in_a_loop(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", os.path.join(TOOLS, "profile.sh"), "--steps", "2", "--output", str(tmp_path), "--top", "5",
         "--iterations_per_loop", "2"] + TINY,
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    trace = json.loads((tmp_path / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert spans and all(e["dur"] >= 1 and isinstance(e["ts"], int) for e in spans)
    names = {e["name"] for e in spans}
    assert any("Conv2D" in name for name in names), sorted(names)[:40]

    with open(str(tmp_path / "ops.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(rows[0]) == {"op_type", "category", "count", "total_ms", "share"}
    totals = [float(r["total_ms"]) for r in rows]
    assert totals == sorted(totals, reverse=True)
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-3)
    categories = {r["category"] for r in rows}
    assert "convolution" in categories and "loop control" in categories  # K = 2 runs an in-graph loop

    # the printed table: header plus --top rows, then the category summary
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("op type"))
    assert lines[header + 6].startswith("by category:")
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    if hasattr(__import__("tensorflow").profiler, "experimental"):
        assert glob.glob(str(tmp_path / "plugins" / "profile" / "*" / "*.xplane.pb"))


def _node(device, name, label, start, duration, thread=0):
    node = device.node_stats.add()
    node.node_name, node.timeline_label = name, label
    node.all_start_micros, node.all_end_rel_micros, node.thread_id = start, duration, thread
    return node


def test_op_table_and_trace_from_step_stats():
    metadata = v1.RunMetadata()
    cpu = metadata.step_stats.dev_stats.add()
    cpu.device = "/job:localhost/replica:0/task:0/device:CPU:0"
    _node(cpu, "unet/down0/conv", "unet/down0/conv = _FusedConv2D(x, w)", 100, 600)
    _node(cpu, "unet/down1/conv", "unet/down1/conv = _FusedConv2D(y, w2)", 700, 200)
    _node(cpu, "IteratorGetNext", "IteratorGetNext = IteratorGetNext(it)", 0, 100)
    _node(cpu, "while/merge/_1", "while/merge/_1 = Merge(a, b)", 900, 50)
    _node(cpu, "_SOURCE", "", 0, 50)
    gpu_all = metadata.step_stats.dev_stats.add()
    gpu_all.device = "/device:GPU:0/stream:all"  # duplicates per-stream records: never counted
    _node(gpu_all, "dup", "dup = Conv2D(x)", 0, 10 ** 6)

    rows = profile_run.op_table([metadata, metadata])
    assert [(r["op_type"], r["count"]) for r in rows] == [
        ("_FusedConv2D", 4), ("IteratorGetNext", 2), ("Merge", 2), ("_SOURCE", 2)]
    assert rows[0]["total_ms"] == pytest.approx(1.6) and rows[0]["share"] == pytest.approx(0.8)
    assert [r["category"] for r in rows] == [
        "convolution", "input (tf.data wait: augmentation)", "loop control", "other"]
    assert profile_run.category_table(rows)[0][0] == "convolution"

    trace = profile_run.chrome_trace([metadata])
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 5 and {e["pid"] for e in spans} == {0}
    assert spans[0]["ts"] == 100 and spans[0]["dur"] == 600 and spans[0]["args"]["name"] == "unet/down0/conv"


# Kernel names seen in traces: plain TF, Grappler's remapper, and oneDNN (whose names differ between CPUs and builds:
# on AVX-512/AMX machines TF 2.21 reports `_MklNative...` kernels where an AVX2 machine reports `_FusedConv2D`).
KERNEL_NAMES = [
    ("Conv2D", "convolution"), ("_FusedConv2D", "convolution"), ("_MklConv2D", "convolution"),
    ("_MklNativeConv2D", "convolution"), ("_MklNativeFusedConv2D", "convolution"),
    ("_MklConv2DBackpropFilter", "convolution"), ("_MklNativeConv2DBackpropFilterWithBias", "convolution"),
    ("_MklConv2DBackpropInput", "convolution"), ("_MklNativeConv2DBackpropInput", "convolution"),
    ("__MklDummyConv2DWithBias", "convolution"), ("_MklNativePadWithFusedConv2D", "convolution"),
    ("_MklFusedDepthwiseConv2dNative", "convolution"), ("FusedPadConv2D", "convolution"),
    ("MatMul", "matmul"), ("_MklMatMul", "matmul"), ("_FusedMatMul", "matmul"), ("_MklNativeFusedMatMul", "matmul"),
    ("_MklFusedBatchMatMulV2", "matmul"), ("BatchMatMulV3", "matmul"),
    ("FusedBatchNormV3", "batch norm"), ("_MklFusedBatchNormV3", "batch norm"), ("_FusedBatchNormEx", "batch norm"),
    ("_MklNativeFusedBatchNormGradV3", "batch norm"),
    ("MaxPool", "pooling / resize"), ("_MklNativeMaxPool", "pooling / resize"),
    ("_MklMaxPoolGrad", "pooling / resize"), ("_MklNativeAvgPool", "pooling / resize"),
    ("ResourceApplyAdam", "optimizer update"), ("_Recv", "variable reads"), ("_SwitchN", "loop control"),
    ("Merge", "loop control"), ("IteratorGetNext", "input (tf.data wait: augmentation)"),
    ("_Retval", "other"), ("_MklToTf", "other"), ("Pad", "other"), ("Relu", "other"), ("Fused", "other"),
]


@pytest.mark.parametrize("op_type,category", KERNEL_NAMES, ids=[name for name, _ in KERNEL_NAMES])
def test_kernel_names_of_every_cpu_fall_in_their_category(op_type, category):
    assert profile_run.op_category(op_type) == category


def test_base_op_type_strips_rewrite_prefixes_only():
    assert profile_run.base_op_type("_MklNativeFusedConv2D") == "Conv2D"
    assert profile_run.base_op_type("_MklNativePadWithFusedConv2D") == "Conv2D"
    assert profile_run.base_op_type("_MklFusedBatchMatMulV2") == "BatchMatMulV2"
    assert profile_run.base_op_type("__MklDummyConv2DWithBias") == "Conv2DWithBias"
    for framework_op in ("_Recv", "_Send", "_SwitchN", "_Retval", "PadV2", "Conv2D", "Fused"):
        assert profile_run.base_op_type(framework_op) == framework_op


def test_fp_bp_points_name_the_first_forward_and_last_backward_op(fresh_graph):
    import tensorflow as tf
    x = tf.ones([1, 8, 8, 1])
    w = v1.get_variable("w", [3, 3, 1, 2])
    y = tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME", name="first_conv")
    loss = tf.reduce_sum(tf.nn.conv2d(y, v1.get_variable("w2", [3, 3, 2, 1]), [1, 1, 1, 1], "SAME"))
    grads = v1.gradients(loss, [w])
    forward, backward = profile_run.fp_bp_points(fresh_graph)
    assert forward == "first_conv"
    # the weight gradient of the first convolution is the last backward op computed (not a tuple identity)
    assert fresh_graph.get_operation_by_name(backward).type == "Conv2DBackpropFilter"
    assert backward.startswith("gradients/first_conv_grad/")
    assert grads[0] is not None


def test_bad_steps_is_a_user_error():
    with pytest.raises(profile_run.UserError, match="--steps"):
        profile_run.main(["--steps", "0"])


# --- Ascend profiling (tools/profile_run.py) --------------------------------------------------------------------

def test_profiling_points_default_to_empty_and_auto_names_graph_ops():
    import tensorflow as tf
    args = profile_run.build_arg_parser().parse_args([])
    assert (args.fp_point, args.bp_point) == ("", "")
    w = v1.get_variable("w", [3, 3, 1, 2])
    loss = tf.reduce_sum(tf.nn.conv2d(tf.ones([1, 8, 8, 1]), w, [1, 1, 1, 1], "SAME", name="first_conv"))
    v1.gradients(loss, [w])
    graph = v1.get_default_graph()
    assert profile_run.npu_profiling_points(graph) == ("", "")
    forward, backward = profile_run.npu_profiling_points(graph, "auto", "auto")
    assert forward == "first_conv" and backward.startswith("gradients/")
    assert profile_run.npu_profiling_points(graph, "auto", "my/bp") == ("first_conv", "my/bp")


def test_profile_result_folders_new_and_old_cann(tmp_path):
    (tmp_path / "PROF_000001_20260101").mkdir()
    (tmp_path / "device_0" / "JOB123ABC").mkdir(parents=True)
    (tmp_path / "PROF_notes.txt").write_text("a file, not a result folder")
    (tmp_path / "other").mkdir()
    assert profile_run.profile_result_dirs(str(tmp_path)) == [
        str(tmp_path / "PROF_000001_20260101"), str(tmp_path / "device_0" / "JOB123ABC")]
    message = profile_run.msprof_export_message(profile_run.profile_result_dirs(str(tmp_path)), str(tmp_path))
    assert "after this process has exited" in message.lower()
    assert "msprof --export=on --output={}".format(tmp_path / "device_0" / "JOB123ABC") in message
    assert "appears under {}".format(tmp_path) in profile_run.msprof_export_message([], str(tmp_path))


def test_profile_on_the_npu_backend_leaves_the_export_for_after_the_process(tmp_path):
    # The stand-in npu_bridge in a subprocess (it never enters this test process); a fake msprof on the PATH that
    # logs its arguments (running it inside the process would export before the data is flushed); result folders
    # where the Ascend profiler would write them.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    msprof = bin_dir / "msprof"
    msprof.write_text("#!/bin/sh\necho \"$@\" >> {}\n".format(tmp_path / "msprof_calls.txt"))
    msprof.chmod(0o755)
    output = tmp_path / "profile"
    (output / "PROF_000001_test").mkdir(parents=True)
    (output / "JOB000002").mkdir()
    env = dict(os.environ, PATH="{}:{}".format(bin_dir, os.environ["PATH"]),
               PYTHONPATH=os.pathsep.join([NPU_STUB, REPO]))
    tiny = ["--depth", "1", "--base_filters", "2", "--crop_size", "16", "--batch_size", "2", "--synthetic_count",
            "2", "--synthetic_size", "32"]
    proc = subprocess.run(
        [sys.executable, os.path.join(TOOLS, "profile_run.py"), "--device", "npu", "--steps", "2",
         "--output", str(output), "--iterations_per_loop", "2"] + tiny,
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("NPU profiling options: "))
    options = json.loads(line.split(": ", 1)[1])
    assert options["output"] == str(output) and (options["fp_point"], options["bp_point"]) == ("", "")
    assert not (tmp_path / "msprof_calls.txt").exists()
    assert "Ascend profile dump: {}, {}".format(output / "JOB000002", output / "PROF_000001_test") in proc.stdout
    assert "msprof --export=on --output={}".format(output / "PROF_000001_test") in proc.stdout
    assert "after this process has exited" in proc.stdout.lower()

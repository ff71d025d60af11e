"""The Ascend ATC command that converts an export into an offline model (.om); runs it with --run.

    python3 tools/atc_command.py export/                           # prints the atc line for Ascend910
    python3 tools/atc_command.py export/ --soc_version Ascend310   # Atlas 300/200 inference (Ascend 310)
    python3 tools/atc_command.py export/ --run [--precision_mode allow_fp32_to_fp16] [--om out/unet]

Reads <export>/export.json (written by `python -m unet_perf.export`) and prints
    atc --framework=3 --model=<export>/unet.pb --output=<om prefix> --input_format=NHWC
        --input_shape="input:B,H,W,1" --out_nodes="probability:0[;classes:0]" --soc_version=<soc>
--framework=3 is TensorFlow (a frozen GraphDef); the shape and the output tensors are the export's; ATC writes
<om prefix>.om (default: next to the export folder, <export>_<soc>.om). --soc_version is the chip's name as
`npu-smi info` shows it, prefixed "Ascend" (Ascend910, Ascend910B3, Ascend310, Ascend310P3, ...).
With --run it runs atc (which must be on PATH: source CANN's set_env.sh first), then prints atc's exit status and
the .om path. A missing or unreadable export.json is a one-line error, exit 2. No TensorFlow needed.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from unet_perf.errors import UserError, run_cli  # noqa: E402
from unet_perf.export import FROZEN_NAME, INFO_NAME  # noqa: E402  (no TensorFlow import)

PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
                   "force_fp32")
SOC_VERSION = re.compile(r"^Ascend[0-9A-Za-z_]+$")


def read_export(export_dir):
    """(export.json as a dict, path of the frozen graph) of the export folder; UserError naming what is wrong."""
    path = os.path.join(export_dir, INFO_NAME)
    redo = "run python -m unet_perf.export --output {}".format(export_dir)
    if not os.path.isfile(path):
        raise UserError("{} is missing; {} first".format(path, redo))
    try:
        with open(path) as handle:
            info = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError("{} is not readable JSON ({}); {} --overwrite".format(path, err, redo))
    shape = info.get("shape") if isinstance(info, dict) else None
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 for dim in shape)
            or not isinstance(info.get("input"), str) or not isinstance(info.get("output"), str)):
        raise UserError("{} has no input, output and static 4-d shape; {} --overwrite".format(path, redo))
    outputs = info.get("outputs", {})
    if not isinstance(outputs, dict) or not all(isinstance(out, dict) and isinstance(out.get("tensor"), str)
                                                for out in outputs.values()):
        raise UserError("{} lists outputs without a tensor name; {} --overwrite".format(path, redo))
    model = os.path.join(export_dir, FROZEN_NAME)
    if not os.path.isfile(model):
        raise UserError("{} is missing beside {}; {} --overwrite".format(model, path, redo))
    return info, model


def out_nodes(info):
    """The export's output tensors: probability:0, and classes:0 for a --num_classes C >= 2 model."""
    outputs = info.get("outputs")
    return [output["tensor"] for output in outputs.values()] if outputs else [info["output"]]


def atc_arguments(info, model, om_prefix, soc_version, precision_mode=None):
    """atc's arguments (without "atc") converting the frozen graph of `info` into <om_prefix>.om."""
    input_node = info["input"].split(":")[0]
    arguments = ["--framework=3", "--model=" + model, "--output=" + om_prefix, "--input_format=NHWC",
                 "--input_shape={}:{}".format(input_node, ",".join(str(dim) for dim in info["shape"])),
                 "--out_nodes=" + ";".join(out_nodes(info)), "--soc_version=" + soc_version]
    if precision_mode:
        arguments.append("--precision_mode=" + precision_mode)
    return arguments


def shell_line(arguments):
    """`atc ...` as one shell line: --input_shape and --out_nodes double-quoted as in the ATC guide."""
    words = ["atc"]
    for argument in arguments:
        flag, value = argument.split("=", 1)
        if flag in ("--input_shape", "--out_nodes"):
            words.append('{}="{}"'.format(flag, value))
        else:
            words.append("{}={}".format(flag, shlex.quote(value)))
    return " ".join(words)


def default_om_prefix(export_dir, soc_version):
    """<export>_<soc>: beside the export folder, which export --overwrite replaces as a whole."""
    return os.path.normpath(os.path.abspath(export_dir)) + "_" + soc_version


def run_atc(atc, arguments, om_prefix):
    """Run the atc executable; print its exit status and the .om it wrote. Returns the exit code for the shell."""
    parent = os.path.dirname(om_prefix)
    if parent:
        os.makedirs(parent, exist_ok=True)
    sys.stdout.flush()
    status = subprocess.call([atc] + arguments)
    om = om_prefix + ".om"
    print("atc exited with status {}".format(status))
    if status != 0:
        return status
    if not os.path.isfile(om):
        print("atc reported success but {} is missing".format(om))
        return 1
    print("offline model  {}".format(om))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print (or --run) the Ascend ATC command converting an export "
                                                 "of python -m unet_perf.export into an offline model (.om)",
                                     allow_abbrev=False)
    parser.add_argument("export", help="the --output folder of python -m unet_perf.export (holds export.json)")
    parser.add_argument("--soc_version", default="Ascend910",
                        help="target chip: Ascend910 (default; Ascend910A/B.. on newer boards), Ascend310, "
                             "Ascend310P3, ... (npu-smi info shows the name)")
    parser.add_argument("--om", default=None,
                        help="output prefix of the offline model, ATC adds .om (default: <export>_<soc_version>)")
    parser.add_argument("--precision_mode", choices=PRECISION_MODES, default=None,
                        help="ATC's --precision_mode (default: ATC's own, force_fp16 for inference)")
    parser.add_argument("--run", action="store_true", help="run atc (must be on PATH) instead of printing only")
    args = parser.parse_args(argv)
    if not SOC_VERSION.match(args.soc_version):
        raise UserError("--soc_version {!r} is not a chip name such as Ascend910 or Ascend310 (npu-smi info "
                        "shows it)".format(args.soc_version))
    export_dir = args.export
    if os.path.basename(export_dir) == INFO_NAME and os.path.isfile(export_dir):  # the export.json itself
        export_dir = os.path.dirname(export_dir) or "."
    info, model = read_export(export_dir)
    atc = shutil.which("atc")
    if args.run and atc is None:
        raise UserError("--run: atc is not on PATH; source CANN's set_env.sh (e.g. "
                        "/usr/local/Ascend/ascend-toolkit/set_env.sh) or drop --run to print the command")
    om_prefix = args.om or default_om_prefix(export_dir, args.soc_version)
    arguments = atc_arguments(info, os.path.abspath(model), om_prefix, args.soc_version, args.precision_mode)
    print(shell_line(arguments))
    if args.run:
        return run_atc(atc, arguments, om_prefix)
    if atc is not None:
        print("atc is on PATH: add --run to run it")
    return 0


if __name__ == "__main__":
    run_cli(main)

"""`python -m unet_perf.export`: a frozen GraphDef (for Ascend ATC) and a SavedModel of a trained U-Net.

    python -m unet_perf.export --model_dir runs/unet --output export/ --height 256 --width 256 --batch 1

Writes
    <output>/unet.pb           frozen GraphDef, fixed input shape
    <output>/saved_model/      SavedModel (tag "serve", signature "serving_default": images -> probability)
    <output>/export.json       names, shapes and the normalisation the input expects

An existing export in --output is replaced only with --overwrite, once the new one is complete.

Tensors (both files):
    input:0        float32 [batch, height, width, 1], the image already NORMALISED as in training
                   (--normalize of the model: unit = x/255, symmetric = x/127.5-1, standard = per-image z-score)
                   and already rescaled by the model's --input_scale
    probability:0  float32 [batch, height, width, 1], P(cell interior) = sigmoid of the logits (--num_classes 1);
                   float32 [batch, height, width, C], the softmax over the C classes (C >= 2)
    classes:0      (C >= 2 only) int32 [batch, height, width], the most probable class (argmax of probability)
                   export.json then records num_classes and both outputs with their shapes

The frozen graph is in the form Ascend's ATC converts (unet_perf.inference.atc_graph): static shapes, one input,
no Identity nodes, batch norm folded into the convolutions; export refuses to write one that is not, and
export.json lists its op types ("frozen_graph_ops"). `python3 tools/atc_command.py <output>` prints the atc line:
    atc --framework=3 --model=<output>/unet.pb --output=<output>_Ascend910 --input_format=NHWC
        --input_shape="input:1,256,256,1" --out_nodes="probability:0" --soc_version=Ascend910
    (C >= 2: --out_nodes="probability:0;classes:0"; --soc_version Ascend310 for the 310; --run runs it)
"""
import json
import os

from unet_perf.inference.cli_flags import add_model_flags
from unet_perf.config import build_parser
from unet_perf.errors import UserError, run_cli
from unet_perf.storage.output_folder import OutputFolder, add_overwrite_flag

INPUT_NAME = "input"
OUTPUT_NAME = "probability"
CLASSES_NAME = "classes"
FROZEN_NAME = "unet.pb"
SAVED_MODEL_DIR = "saved_model"
SIGNATURE_INPUT = "images"
INFO_NAME = "export.json"
EXPORT_FILES = (FROZEN_NAME, SAVED_MODEL_DIR, INFO_NAME)


def export_model(model_dir, output, height=None, width=None, batch=1, checkpoint=None, precision="fp32",
                 weights="ema", overwrite=False):
    """Write the frozen graph, the SavedModel and export.json; returns the export.json dict.

    weights: "ema" bakes in the checkpoint's EMA weights when it has them, "raw" the trained weights.
    An existing export in `output` is replaced only with overwrite=True, and only once the new one is complete
    (unet_perf.storage.output_folder): a failed export leaves the previous one intact.
    """
    from unet_perf.compat import v1
    from unet_perf.inference.model_dir import load_config
    from unet_perf.inference.predictor import with_precision

    cfg = with_precision(load_config(model_dir), precision)
    verbosity = v1.logging.get_verbosity()
    v1.logging.set_verbosity(v1.logging.ERROR)  # the v1 freeze/SavedModel APIs log deprecation notices on 2.x
    try:
        return _export(cfg, model_dir, output, height, width, batch, checkpoint, weights, overwrite)
    finally:
        v1.logging.set_verbosity(verbosity)


def _export(cfg, model_dir, output, height, width, batch, checkpoint, weights, overwrite):
    from unet_perf.compat import v1
    from unet_perf.inference.atc_graph import atc_problems, for_atc
    from unet_perf.inference.model_dir import resolve_checkpoint
    from unet_perf.inference.predictor import build_predictor, restore

    height = height or cfg.crop_size
    width = width or cfg.crop_size
    multiple = 2 ** cfg.depth
    for flag, value in (("--height", height), ("--width", width)):
        if value <= 0 or value % multiple:
            raise UserError("{} {} must be a positive multiple of 2^depth = {} (try {})".format(
                flag, value, multiple, max(multiple, value // multiple * multiple)))
    if batch <= 0:
        raise UserError("--batch must be positive, got {}".format(batch))
    prefix = resolve_checkpoint(model_dir, checkpoint)
    saved_model_dir = os.path.join(output, SAVED_MODEL_DIR)
    info = {
        "checkpoint": prefix, "weights": None, "frozen_graph": os.path.join(output, FROZEN_NAME),
        "saved_model": saved_model_dir,
        "input": INPUT_NAME + ":0", "output": OUTPUT_NAME + ":0", "shape": [batch, height, width, 1],
        "dtype": "float32", "normalize": cfg.normalize, "input_scale": cfg.input_scale, "precision": cfg.precision,
        "signature": "serving_default", "signature_input": SIGNATURE_INPUT, "signature_output": OUTPUT_NAME,
    }
    multi_class = cfg.num_classes > 1
    if multi_class:
        info["num_classes"] = cfg.num_classes
        info["outputs"] = {
            OUTPUT_NAME: {"tensor": OUTPUT_NAME + ":0", "shape": [batch, height, width, cfg.num_classes],
                          "dtype": "float32", "meaning": "softmax probability of each class"},
            CLASSES_NAME: {"tensor": CLASSES_NAME + ":0", "shape": [batch, height, width], "dtype": "int32",
                           "meaning": "the most probable class id (argmax)"}}
        info["signature_outputs"] = [OUTPUT_NAME, CLASSES_NAME]
    with OutputFolder(output, overwrite, lambda name: name in EXPORT_FILES, last=(INFO_NAME,),
                      command="export") as staging:
        graph = v1.Graph()
        with graph.as_default(), v1.Session(graph=graph) as sess:
            images, probability = build_predictor(cfg, batch, height, width, INPUT_NAME, OUTPUT_NAME)
            outputs = {OUTPUT_NAME: probability}
            if multi_class:
                outputs[CLASSES_NAME] = v1.argmax(probability, axis=-1, output_type=v1.int32, name=CLASSES_NAME)
            info["weights"] = restore(sess, prefix, model_dir, cfg, weights)
            frozen = v1.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), sorted(outputs))
            frozen = for_atc(frozen, sorted(outputs))
            problems = atc_problems(frozen, INPUT_NAME)
            if problems:  # a bug of the network or of for_atc, not of the user's flags
                raise RuntimeError("the frozen graph is not ready for ATC: " + "; ".join(problems))
            info["frozen_graph_ops"] = sorted(set(node.op for node in frozen.node))
            with open(os.path.join(staging, FROZEN_NAME), "wb") as handle:
                handle.write(frozen.SerializeToString())
            builder = v1.saved_model.builder.SavedModelBuilder(os.path.join(staging, SAVED_MODEL_DIR))
            signature = v1.saved_model.signature_def_utils.predict_signature_def(
                inputs={SIGNATURE_INPUT: images}, outputs=outputs)
            builder.add_meta_graph_and_variables(
                sess, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={v1.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY: signature})
            builder.save()
        with open(os.path.join(staging, INFO_NAME), "w") as handle:
            json.dump(info, handle, indent=2)
    return info


def main(argv=None):
    parser = build_parser("Export a trained U-Net as a frozen GraphDef (for ATC) and a SavedModel", fields=())
    add_model_flags(parser, precision_default="fp32",
                    precision_help="compute precision baked into the graph (fp32 lets ATC choose with "
                                   "--precision_mode)")
    parser.add_argument("--output", required=True, help="folder for unet.pb, saved_model/ and export.json")
    parser.add_argument("--height", type=int, default=None, help="input height (default: the model's --crop_size)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: the model's --crop_size)")
    parser.add_argument("--batch", type=int, default=1, help="fixed batch size of the input")
    add_overwrite_flag(parser, "replace an existing export in --output (kept intact until the new one is complete)")
    args = parser.parse_args(argv)
    info = export_model(args.model_dir, args.output, args.height, args.width, args.batch, args.checkpoint,
                        args.precision, args.weights, args.overwrite)
    outputs = info["output"]
    if "outputs" in info:
        outputs = ", ".join("{} {}".format(out["tensor"], out["shape"]) for out in info["outputs"].values())
    print("frozen graph  {}  ({} -> {}, shape {})".format(info["frozen_graph"], info["input"], outputs,
                                                         info["shape"]))
    print("saved model   {}  (signature serving_default: {} -> {})".format(
        info["saved_model"], SIGNATURE_INPUT, ", ".join(info.get("signature_outputs", [OUTPUT_NAME]))))
    print("input must be normalised with --normalize {} after rescaling by --input_scale {}".format(
        info["normalize"], info["input_scale"]))
    return 0


if __name__ == "__main__":
    run_cli(main)

"""The frozen inference graph in the form Ascend's ATC converts (`python -m unet_perf.export` writes it to unet.pb).

ATC takes only a frozen GraphDef with static shapes and no training operators (CANN ATC guide, "restrictions":
FrozenGraphDef only, no dynamic input shapes, dims != 0, no training operators, only listed TensorFlow operators).
`for_atc` rewrites the frozen graph into that form: Identity nodes removed, Cast of a constant folded into the
constant, inference batch norm folded into the convolution before it (Conv2D + BiasAdd: FusedBatchNormV3's sixth
output has no static shape, and one op less per layer), and only what the outputs need kept.
`atc_problems` lists whatever would still stop ATC; export refuses to write a graph that has any.
"""
import numpy as np

from unet_perf.compat import v1

# Op types a graph for ATC must not hold: variables and their updates, host Python, random draws, control flow.
STATE_AND_TRAINING_OPS = frozenset([
    "Variable", "VariableV2", "VarHandleOp", "ReadVariableOp", "VarIsInitializedOp", "PlaceholderWithDefault",
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "NoOp",
    "While", "If", "Switch", "Merge", "Enter", "Exit", "NextIteration", "LoopCond"])
STATE_AND_TRAINING_PREFIXES = ("Assign", "Apply", "ResourceApply", "Random", "Stateless", "TruncatedNormal",
                               "ParameterizedTruncatedNormal", "Multinomial")
PLACEHOLDERS = ("Placeholder", "PlaceholderV2")


def for_atc(graph_def, output_names):
    """The frozen `graph_def` rewritten for ATC (see the module docstring); computes the same outputs."""
    graph_def = v1.graph_util.remove_training_nodes(graph_def, protected_nodes=list(output_names))
    graph_def = _fold_batch_norms(_fold_constant_casts(graph_def))
    return v1.graph_util.extract_sub_graph(graph_def, list(output_names))


def atc_problems(graph_def, input_name):
    """What would stop ATC converting `graph_def` fed through the placeholder `input_name`: [] when nothing."""
    problems = []
    placeholders = [node.name for node in graph_def.node if node.op in PLACEHOLDERS]
    if placeholders != [input_name]:
        problems.append("placeholders {} instead of the one input {!r}".format(placeholders, input_name))
    for node in graph_def.node:
        if node.op in STATE_AND_TRAINING_OPS or node.op.startswith(STATE_AND_TRAINING_PREFIXES):
            problems.append("{} is a {} op".format(node.name, node.op))
        elif "is_training" in node.attr and node.attr["is_training"].b:
            problems.append("{} ({}) is in training mode".format(node.name, node.op))
    with v1.Graph().as_default() as graph:
        v1.import_graph_def(graph_def, name="")
        for op in graph.get_operations():
            for tensor in op.outputs:
                if not tensor.shape.is_fully_defined():
                    problems.append("{} ({}) has no static shape: {}".format(tensor.name, op.type, tensor.shape))
                elif op.type != "Const" and 0 in tensor.shape.as_list():
                    problems.append("{} ({}) has an empty dimension: {}".format(tensor.name, op.type, tensor.shape))
    return problems


def _producer(name):
    """The node name of an input reference ("x", "x:1"; "^x" is a control input: None)."""
    return None if name.startswith("^") else name.split(":")[0]


def _constant(node):
    return v1.make_ndarray(node.attr["value"].tensor)


def _set_constant(node, value):
    node.attr["value"].tensor.CopyFrom(v1.make_tensor_proto(value))
    node.attr["dtype"].type = v1.as_dtype(value.dtype).as_datatype_enum


def _new_constant(name, value):
    node = v1.NodeDef(name=name, op="Const")
    _set_constant(node, value)
    return node


def _fold_constant_casts(graph_def):
    """Cast(Const) -> one Const of the cast type (the fp16 weights of a --precision fp16 export)."""
    nodes = {node.name: node for node in graph_def.node}
    out = v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    for node in graph_def.node:
        source = nodes.get(_producer(node.input[0])) if node.op == "Cast" and len(node.input) == 1 else None
        if source is not None and source.op == "Const":
            dtype = v1.as_dtype(node.attr["DstT"].type).as_numpy_dtype
            out.node.extend([_new_constant(node.name, _constant(source).astype(dtype))])
        else:
            out.node.extend([node])
    return out


def _fold_batch_norms(graph_def):
    """Conv2D(x, W) -> FusedBatchNorm*(is_training false) becomes Conv2D(x, W * s) -> BiasAdd(beta - mean * s),
    s = gamma / sqrt(variance + epsilon); a batch norm of another shape is left as it is."""
    nodes = {node.name: node for node in graph_def.node}
    readers = {}
    for node in graph_def.node:
        for name in node.input:
            readers.setdefault(_producer(name), []).append(node.name)
    replaced = {}  # batch norm name -> its BiasAdd
    for node in graph_def.node:
        if not node.op.startswith("FusedBatchNorm") or node.attr["is_training"].b:
            continue
        conv = nodes.get(_producer(node.input[0]))
        params = [nodes.get(_producer(name)) for name in node.input[1:5]]
        if (conv is None or conv.op != "Conv2D" or readers.get(conv.name) != [node.name]
                or any(param is None or param.op != "Const" for param in params)):
            continue
        kernel = nodes.get(_producer(conv.input[1]))
        if kernel is None or kernel.op != "Const" or readers.get(kernel.name) != [conv.name]:
            continue
        if node.attr["data_format"].s not in (b"", b"NHWC") or conv.attr["data_format"].s not in (b"", b"NHWC"):
            continue
        gamma, beta, mean, variance = [_constant(param).astype(np.float64) for param in params]
        scale = gamma / np.sqrt(variance + node.attr["epsilon"].f)
        weights = _constant(kernel)
        _set_constant(kernel, (weights.astype(np.float64) * scale).astype(weights.dtype))  # HWIO: scales O
        bias_dtype = v1.as_dtype(node.attr["T"].type).as_numpy_dtype
        scope = conv.name.rsplit("/", 1)[0] + "/" if "/" in conv.name else ""
        bias = _new_constant(scope + "folded_bias", (beta - mean * scale).astype(bias_dtype))
        add = v1.NodeDef(name=scope + "folded_bias_add", op="BiasAdd", input=[conv.name, bias.name])
        add.attr["T"].CopyFrom(node.attr["T"])
        add.attr["data_format"].s = b"NHWC"
        replaced[node.name] = (add, bias)
    if not replaced:
        return graph_def
    out = v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    for node in graph_def.node:
        if node.name in replaced:
            out.node.extend(replaced[node.name])
            continue
        copy = out.node.add()
        copy.CopyFrom(node)
        for index, name in enumerate(copy.input):
            if _producer(name) in replaced:
                if ":" in name and not name.endswith(":0"):
                    raise ValueError("{} reads {}, not the y output of a folded batch norm".format(copy.name, name))
                copy.input[index] = replaced[_producer(name)][0].name
    return out

"""What the TF 1.15 listings cannot say: members they do not show, names that break on TF 2.x, how tf.data
objects flow, and the one file allowed to hold TF-2-only lines."""
import re

MARKER_FILE = "unet_perf/compat.py"
MARKER = re.compile(r"#\s*TF-2-only:\s*\S")

# Proto modules known to exist in TF 1.15: npu_bridge's own npu_init imports these on the 1.15 stack.
PROTO_MODULES = ("tensorflow.core.protobuf.config_pb2", "tensorflow.core.protobuf.rewriter_config_pb2")

# Members the signature listing cannot show (options defined with create_option, class constants), from the
# TF 1.15 sources: python/data/ops/dataset_ops.py, python/data/experimental/ops/threading_options.py,
# python/framework/ops.py. Keyed by the path below tf / tf.compat.v1 / tf.compat.v2; value: the member's class.
STRICT_MEMBERS = {
    "data.Options": {
        "experimental_deterministic": None, "experimental_distribute": "data.experimental.DistributeOptions",
        "experimental_optimization": "data.experimental.OptimizationOptions", "experimental_slack": None,
        "experimental_stats": "data.experimental.StatsOptions",
        "experimental_threading": "data.experimental.ThreadingOptions"},
    "data.experimental.ThreadingOptions": {"max_intra_op_parallelism": None, "private_threadpool_size": None},
    "GraphKeys": dict.fromkeys((
        "GLOBAL_VARIABLES", "LOCAL_VARIABLES", "METRIC_VARIABLES", "MODEL_VARIABLES", "TRAINABLE_VARIABLES",
        "SUMMARIES", "QUEUE_RUNNERS", "TABLE_INITIALIZERS", "ASSET_FILEPATHS", "MOVING_AVERAGE_VARIABLES",
        "REGULARIZATION_LOSSES", "CONCATENATED_VARIABLES", "SAVERS", "WEIGHTS", "BIASES", "ACTIVATIONS",
        "UPDATE_OPS", "LOSSES", "SAVEABLE_OBJECTS", "RESOURCES", "LOCAL_RESOURCES",
        "TRAINABLE_RESOURCE_VARIABLES", "INIT_OP", "LOCAL_INIT_OP", "READY_OP", "READY_FOR_LOCAL_INIT_OP",
        "SUMMARY_OP", "GLOBAL_STEP", "EVAL_STEP", "TRAIN_OP", "COND_CONTEXT", "WHILE_CONTEXT")),
}
# Classes whose methods all live in one module, so the signature listing has every member.
COMPLETE_CLASSES = ("data.Dataset",)

# Names in TF 1.15 that break on TF 2.x (path below tf / tf.compat.v1, fnmatch patterns) and why.
TF2_BREAKERS = (
    ("layers", "Keras-backed: raises 'not available with Keras 3' on TF 2.16+; use tf.nn + get_variable"),
    ("layers.*", "Keras-backed: raises 'not available with Keras 3' on TF 2.16+; use tf.nn + get_variable"),
    ("contrib", "tf.contrib does not exist in TF 2.x"),
    ("contrib.*", "tf.contrib does not exist in TF 2.x"),
    # tf.compat.v1 names of 1.15 that TF 2.21 no longer has (measured with getattr on 2.21).
    ("nn.rnn_cell.*", "not in TF 2.21 (Keras-backed)"),
    ("config.experimental_list_devices", "not in TF 2.21"),
    ("data.experimental.CheckpointInputPipelineHook", "not in TF 2.21"),
    ("data.experimental.MapVectorizationOptions", "not in TF 2.21"),
    ("data.experimental.StatsAggregator", "not in TF 2.21"),
    ("data.experimental.StatsOptions", "not in TF 2.21"),
    ("data.experimental.bytes_produced_stats", "not in TF 2.21"),
    ("data.experimental.latency_stats", "not in TF 2.21"),
    ("lite.experimental.get_potentially_supported_ops", "not in TF 2.21"),
    ("lite.experimental.microfrontend*", "not in TF 2.21"),
    ("lite.experimental.nn*", "not in TF 2.21"),
    ("raw_ops.CompareAndBitpack", "not in TF 2.21"),
    ("raw_ops.*TPUEmbedding*GradAccumDebug", "not in TF 2.21"),
    ("tpu.experimental.*Parameters", "not in TF 2.21"),
)
KERAS_REASON = "no Keras in unet_perf (tf.keras is Keras 3 on TF 2.16+); use raw ops / tf.nn"

DATASET_SOURCES = ("from_generator", "from_sparse_tensor_slices", "from_tensor_slices", "from_tensors",
                   "list_files", "range", "zip")
DATASET_NOT_RETURNING = ("reduce", "make_one_shot_iterator", "make_initializable_iterator", "options",
                         "output_classes", "output_shapes", "output_types", "element_spec")
DATASET_CLASSES = ("Dataset", "TFRecordDataset", "TextLineDataset", "FixedLengthRecordDataset")
SELF_ENTERING = ("Session", "InteractiveSession")  # `with X() as s` binds the X instance

V1_ROOT = "tf.compat.v1."
# Root submodules TF 2.x has although 1.15's tf.compat.v2 lacks them (added in 2.2; measured on TF 2.21).
V2_ROOT_ADDED_LATER = ("profiler",)

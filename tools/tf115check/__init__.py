"""Static check that unet_perf only uses TensorFlow 1.15 and npu_bridge API that exists (never imports the code).

    python tools/check_tf115.py [paths...] [--compat_dir DIR]

Reads every .py file under the given paths (default: unet_perf, benchmarks and tools of this repo) with `ast`,
resolves each TensorFlow / npu_bridge attribute chain through import aliases, module-level and function-local
aliases (`tf`, `v1 = tf.compat.v1`, `from unet_perf.compat import v1`, `opts = tf.data.Options()`, datasets built
from tf.data), and checks it against the TF 1.15 and npu_bridge API listings in data/ (see data/README.md):

- every name against tf115_api.txt; a member of a listed class against the methods in tf115_signatures.txt
  (class constants and inherited methods are not listed there: only tf.data.Dataset, tf.data.Options,
  ThreadingOptions and GraphKeys, whose members rules.py completes, are checked strictly);
- a root `tf.X` is 1.15's `tf.compat.v1.X` (the listing names only the root's submodules); it must also exist as
  `tf.compat.v2.X` (TF 2.x's root is the v2 API; tf.profiler, added to it in 2.2, is the one exception) and its
  keywords must be accepted by both signatures; `tf.compat.v1.X` is the same in both versions;
- keyword arguments (and the number of positional ones) of each call against its listed signature;
- names that exist in 1.15 but break on TF 2.x (Keras-backed tf.compat.v1.layers, Keras, tf.contrib, names TF 2.21
  dropped), and `.map/.interleave(deterministic=...)` on any receiver;
- every npu_bridge module, name and keyword against npu_bridge_api.txt.

Protobuf modules (`from tensorflow.core.protobuf import rewriter_config_pb2`) are not in the public listing: they
are generated code whose modules are allowed when npu_bridge itself imports them on the 1.15 stack (its
`<- from tensorflow.core...` lines) or they are in PROTO_MODULES; their fields are runtime and not checked.
Attributes of objects only known at runtime (tensors, sessions, protos) are not flagged.

A line carrying `# TF-2-only: <reason>` (the whole statement it starts; for an `if`, its body, not its else) is
skipped, only in unet_perf/compat.py; the summary counts the skipped lines.
Output: `file:line: name (reason)` per violation and exit 1; else one summary line and exit 0; exit 2 when the
listings are missing.

Modules: rules (API facts the listings lack), listings (the listings and lookups), resolver (names and
references in one file), checker (files, marker, summary), cli (the command line).
"""
from .checker import Checker, check_paths, python_files  # noqa: F401  (the package's API)
from .cli import main  # noqa: F401
from .listings import DATA_DIR, UsageError, load_listings  # noqa: F401

#!/usr/bin/env python
"""Static check that unet_perf only uses TensorFlow 1.15 and npu_bridge API that exists (never imports the code).

    python tools/check_tf115.py [paths...] [--compat_dir DIR]

Reads every .py file under the given paths (default: unet_perf, benchmarks and tools of this repo) with `ast`,
resolves each TensorFlow / npu_bridge attribute chain through import aliases, module-level and function-local
aliases (`tf`, `v1 = tf.compat.v1`, `from unet_perf.compat import v1`, `opts = tf.data.Options()`, datasets built
from tf.data), and checks it against the listings in ../shared/compat (see its README):

- every name against tf115_api.txt; a member of a listed class against the methods in tf115_signatures.txt
  (class constants and inherited methods are not listed there: only tf.data.Dataset, tf.data.Options,
  ThreadingOptions and GraphKeys, whose members are complete below, are checked strictly);
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
"""
import argparse
import ast
import difflib
import fnmatch
import os
import re
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PACKAGES = ("unet_perf", "benchmarks", "tools")
LISTING_FILES = ("tf115_api.txt", "tf115_signatures.txt", "npu_bridge_api.txt")
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

UNKNOWN = ("unknown",)
V1_ROOT = "tf.compat.v1."
# Root submodules TF 2.x has although 1.15's tf.compat.v2 lacks them (added in 2.2; measured on TF 2.21).
V2_ROOT_ADDED_LATER = ("profiler",)


class UsageError(Exception):
    """A problem with how the checker was called (missing listings, bad path): one line, exit 2."""


# ----------------------------------------------------------------------------------------------- listings
class Signature(object):
    """Which keywords and how many positional arguments a listed Python signature accepts."""

    def __init__(self, text):
        self.text = text
        self.keywords = set()
        self.max_positional = 0
        self.var_positional = False
        self.var_keyword = False
        keyword_only = False
        for part in _split_params(text):
            if part == "*":
                keyword_only = True
            elif part == "/":
                self.keywords = set()  # everything before "/" is positional-only
            elif part.startswith("**"):
                self.var_keyword = True
            elif part.startswith("*"):
                self.var_positional = keyword_only = True
            else:
                self.keywords.add(re.split(r"[=:]", part, 1)[0].strip())
                if not keyword_only:
                    self.max_positional += 1

    def accepts(self, keyword):
        return self.var_keyword or keyword in self.keywords


def _split_params(text):
    """Split a parameter list at top-level commas (defaults hold lists, calls and strings)."""
    parts, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


def _read_signature_line(line):
    """`a.b.f(x, y=1)` -> ("a.b.f", Signature); None for other lines."""
    match = re.match(r"^([A-Za-z_][\w.]*)\((.*)\)\s*$", line)
    if not match:
        return None
    return match.group(1), Signature(match.group(2))


def _parent(path):
    return path.rsplit(".", 1)[0] if "." in path else ""


def _prefixes(path):
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


class TfListing(object):
    """tf115_api.txt names + tf115_signatures.txt signatures and class members."""

    def __init__(self, api_lines, signature_lines):
        self.names = set(line.strip() for line in api_lines if line.strip())
        self.signatures = {}
        for line in signature_lines:
            entry = _read_signature_line(line.strip())
            if entry is not None:
                self.signatures[entry[0]] = entry[1]
        # The listing names the root's submodules (tf.nn.conv2d) but not its own symbols (tf.cast): under 1.15
        # the root is the v1 API, so tf.X is tf.compat.v1.X.
        for table in (self.names, self.signatures):
            for name in list(table):
                suffix = name[len(V1_ROOT):]
                if name.startswith(V1_ROOT) and not suffix.startswith("compat") and "tf." + suffix not in table:
                    if isinstance(table, set):
                        table.add("tf." + suffix)
                    else:
                        table["tf." + suffix] = table[name]
        self.modules = set(_parent(name) for name in self.names if "." in name)
        self.members = {}
        for name in self.signatures:
            owner = _parent(name)
            if owner in self.names and owner not in self.modules:
                self.members.setdefault(owner, set()).add(name.rsplit(".", 1)[1])

    def is_class(self, path):
        last = path.rsplit(".", 1)[-1]
        return path in self.names and path not in self.modules and last[:1].isupper() and not last.isupper()

    def lookup(self, path):
        """("ok"|"missing"|"unverified", detail) for a dotted tf.* path."""
        parts = path.split(".")
        if path in self.names or path in self.modules or any(part.startswith("__") for part in parts):
            return "ok", None
        for depth in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:depth])
            if prefix not in self.names and prefix not in self.modules:
                continue
            if prefix in self.modules:
                return "missing", prefix
            if depth < len(parts) - 1:
                return "unverified", None  # deeper than a member of a class/function: runtime objects
            return self._member_status(prefix, parts[depth])
        return "missing", "tf"

    def _member_status(self, owner, member):
        if member.startswith("__") or member in self.members.get(owner, ()):
            return "ok", None
        suffix = api_suffix(owner)
        if suffix in STRICT_MEMBERS:
            return ("ok", None) if member in STRICT_MEMBERS[suffix] else ("missing", owner)
        if suffix in COMPLETE_CLASSES:
            return "missing", owner
        return "unverified", None  # class constants and inherited methods are not in the listing

    def suggestion(self, missing_path, scope_path):
        """A close listed name for a typo, or ''."""
        candidates = set(name.rsplit(".", 1)[1] for name in self.names if _parent(name) == scope_path)
        candidates |= self.members.get(scope_path, set())
        candidates |= set(STRICT_MEMBERS.get(api_suffix(scope_path), ()))
        close = difflib.get_close_matches(missing_path.rsplit(".", 1)[1], sorted(candidates), n=1)
        return "; did you mean {}.{}?".format(scope_path, close[0]) if close else ""


class NpuListing(object):
    """npu_bridge_api.txt: modules, functions, classes (+ whether all their members are listed), re-exports."""

    def __init__(self, lines):
        self.signatures = {}
        self.classes = {}  # class path -> True when its bases are all inside the listing (members complete)
        self.reexports = {}  # "module.name" -> "source.module.name"
        self.modules = set()
        self.tf_imports = set()  # tensorflow modules npu_bridge imports on the 1.15 stack
        for raw in lines:
            line = raw.strip()
            reexport = re.match(r"^([\w.]+)\s+<-\s+from\s+([\w.]+)\s+import\s+(\w+)$", line)
            klass = re.match(r"^([\w.]+)\s+\[class\((.*)\)\]$", line)
            if reexport:
                module, source, name = reexport.groups()
                self.reexports[module + "." + name] = source + "." + name
                self.modules.update(_prefixes(module))
                if source.startswith("npu_bridge"):
                    self.modules.update(_prefixes(source))
                if source.startswith("tensorflow."):
                    self.tf_imports.add(source + "." + name if name.endswith("_pb2") else source)
            elif klass:
                bases = [base.strip() for base in klass.group(2).split(",") if base.strip()]
                self.classes[klass.group(1)] = all(base == "object" for base in bases)
            else:
                entry = _read_signature_line(line)
                if entry:
                    self.signatures[entry[0]] = entry[1]
        for name in self.signatures:
            owner = _parent(name)
            module = _parent(owner) if owner in self.classes else owner
            if name not in self.classes:
                self.modules.update(_prefixes(module))
        for klass in self.classes:
            self.modules.update(_prefixes(_parent(klass)))

    def canonical(self, path):
        """One attribute step through a re-export (`npu_init.NPURunConfig` -> its defining module's name)."""
        return self.reexports.get(path, path)

    def known(self, path):
        return path in self.modules or path in self.classes or path in self.signatures

    def lookup(self, path):
        """("ok"|"missing"|"unverified", detail) for a canonical attribute chain starting at npu_bridge."""
        if not path.startswith("npu_bridge") or self.known(path):
            return ("ok", None) if self.known(path) else ("unverified", None)
        parts = path.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:depth])
            if not self.known(prefix):
                continue
            if prefix in self.modules:
                return "missing", prefix
            if prefix in self.classes and depth == len(parts) - 1 and self.classes[prefix]:
                return ("ok", None) if parts[depth].startswith("__") else ("missing", prefix)
            return "unverified", None
        return "missing", "npu_bridge"

    def signature(self, path):
        return self.signatures.get(path)

    def suggestion(self, missing_path, scope_path):
        names = set()
        for name in list(self.signatures) + list(self.classes) + list(self.reexports) + list(self.modules):
            if _parent(name) == scope_path:
                names.add(name.rsplit(".", 1)[1])
        close = difflib.get_close_matches(missing_path.rsplit(".", 1)[1], sorted(names), n=1)
        return "; did you mean {}.{}?".format(scope_path, close[0]) if close else ""


def api_suffix(path):
    """The path below the version root: tf.compat.v1.data.Options -> data.Options."""
    for root in ("tf.compat.v1.", "tf.compat.v2.", "tf."):
        if path.startswith(root):
            return path[len(root):]
    return path


def load_listings(compat_dir):
    paths = [os.path.join(compat_dir, name) for name in LISTING_FILES]
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError("API listing not found: {}; pass --compat_dir DIR (the folder with {})".format(
                path, ", ".join(LISTING_FILES)))
    texts = []
    for path in paths:
        with open(path) as handle:
            texts.append(handle.read().splitlines())
    return TfListing(texts[0], texts[1]), NpuListing(texts[2])


# ----------------------------------------------------------------------------------------------- scopes
class Scope(object):
    """Names bound in one module/function/class body -> kinds; UNKNOWN shadows outer names."""

    def __init__(self, parent=None):
        self.parent = parent
        self.bindings = {}

    def lookup(self, name):
        scope = self
        while scope is not None:
            if name in scope.bindings:
                kind = scope.bindings[name]
                return None if kind == UNKNOWN else kind
            scope = scope.parent
        return None


def _statements_in_order(body):
    """Statements of one scope in source order, descending into if/for/while/try/with but not def/class."""
    for statement in body:
        yield statement
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for field in ("body", "orelse", "finalbody"):
            for inner in _statements_in_order(getattr(statement, field, None) or []):
                yield inner
        for handler in getattr(statement, "handlers", None) or []:
            yield handler
            for inner in _statements_in_order(handler.body):
                yield inner


def _last_line(node):
    end = getattr(node, "end_lineno", None)
    if end is not None:
        return end
    return max(getattr(child, "lineno", 0) for child in ast.walk(node))


def _source_chain(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return _source_chain(node.value) + "." + node.attr
    if isinstance(node, ast.Call):
        return _source_chain(node.func) + "(...)"
    return "<expr>"


# ----------------------------------------------------------------------------------------------- checker
class Checker(object):
    """Resolves and checks every TensorFlow / npu_bridge reference of the files it is given."""

    def __init__(self, tf_listing, npu_listing, root=REPO_ROOT):
        self.tf = tf_listing
        self.npu = npu_listing
        self.root = os.path.abspath(root)
        self.proto_modules = set(PROTO_MODULES) | npu_listing.tf_imports
        self.repo_tables = {}
        self.violations = []  # (path, line, name, reason)
        self.files = 0
        self.tf_references = 0
        self.npu_references = 0
        self.allowlisted_lines = 0

    # -- files
    def check_file(self, path):
        self.files += 1
        with open(path, "rb") as handle:
            source = handle.read().decode("utf-8", "replace")
        try:
            tree = ast.parse(source, path)
        except SyntaxError as err:
            self.violations.append((path, err.lineno or 1, "<syntax>", "cannot parse: {}".format(err.msg)))
            return
        module_name = self._module_name(path)
        sink = []
        FileVisitor(self, module_name, sink).run(tree)
        skipped = self._allowlisted_lines(path, source, tree)
        self.allowlisted_lines += len(skipped)
        found, seen = [], set()
        for line, name, reason in sink:  # first reason per (line, name): 1.15 before the TF 2.x variant
            if line not in skipped and (line, name) not in seen:
                seen.add((line, name))
                found.append((path, line, name, reason))
        self.violations.extend(sorted(found, key=lambda violation: violation[1]))

    def _relative(self, path):
        relative = os.path.relpath(os.path.abspath(path), self.root)
        return relative.replace(os.sep, "/")

    def _module_name(self, path):
        relative = self._relative(path)
        if relative.startswith(".."):
            relative = os.path.basename(path)
        name = relative[:-3] if relative.endswith(".py") else relative
        name = name.replace("/", ".")
        return name[:-len(".__init__")] if name.endswith(".__init__") else name

    def _allowlisted_lines(self, path, source, tree):
        """Lines under a `# TF-2-only: <reason>` marker (line, its statement, or the body of a marked if)."""
        if self._relative(path) != MARKER_FILE:
            return set()
        marked = set(number for number, text in enumerate(source.splitlines(), 1) if MARKER.search(text))
        lines = set(marked)
        for node in ast.walk(tree):
            if not isinstance(node, ast.stmt) or node.lineno not in marked:
                continue
            if isinstance(node, ast.If):
                lines.update(range(node.body[0].lineno, _last_line(node.body[-1]) + 1))
            elif not hasattr(node, "body"):
                lines.update(range(node.lineno, _last_line(node) + 1))
        return lines

    # -- repository modules (for `from unet_perf.compat import v1`)
    def repo_module_exists(self, module):
        base = os.path.join(self.root, *module.split("."))
        return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))

    def repo_table(self, module):
        """Module-level bindings of a repository module, resolved silently (cached, cycle-safe)."""
        if module in self.repo_tables:
            return self.repo_tables[module] or {}
        self.repo_tables[module] = None
        base = os.path.join(self.root, *module.split("."))
        path = base + ".py" if os.path.isfile(base + ".py") else os.path.join(base, "__init__.py")
        table = {}
        try:
            with open(path, "rb") as handle:
                tree = ast.parse(handle.read().decode("utf-8", "replace"), path)
            scope = Scope()
            FileVisitor(self, module, None).bind_scope(tree.body, scope)
            table = scope.bindings
        except (IOError, OSError, SyntaxError):
            if module == "unet_perf.compat":
                table = {"v1": ("tf", "tf.compat.v1"), "tf": ("tf", "tf")}
        self.repo_tables[module] = table
        return table

    def summary(self):
        text = "checked {} files, {} TensorFlow references, {} npu_bridge references".format(
            self.files, self.tf_references, self.npu_references)
        if self.allowlisted_lines:
            text += ", {} allow-listed TF-2-only lines skipped ({})".format(self.allowlisted_lines, MARKER_FILE)
        if self.violations:
            return text + ": {} violations".format(len(self.violations))
        return text + ": no violations"


class FileVisitor(object):
    """Binds names scope by scope, then resolves every expression; `sink` collects (line, name, reason)."""

    def __init__(self, checker, module_name, sink):
        self.checker = checker
        self.tf = checker.tf
        self.npu = checker.npu
        self.module_name = module_name
        self.sink = sink
        self.memo = {}
        self.counted = set()

    # -- reporting
    def report(self, line, name, reason):
        if self.sink is not None:
            self.sink.append((line, name, reason))

    def run(self, tree):
        scope = Scope()
        self.bind_scope(tree.body, scope)
        self.visit_body(tree.body, scope)

    # -- binding
    def bind_scope(self, body, scope, arguments=None):
        """Fill scope.bindings: a name keeps a kind only if every assignment in the scope gives the same one."""
        history = {}
        progress = Scope(scope.parent)
        if arguments is not None:
            for arg in _argument_names(arguments):
                history[arg] = [UNKNOWN]
                progress.bindings[arg] = UNKNOWN
        for statement in _statements_in_order(body):
            for name, kind in self._bindings_of(statement, progress):
                history.setdefault(name, []).append(kind or UNKNOWN)
                progress.bindings[name] = kind or UNKNOWN
        for name, kinds in history.items():
            scope.bindings[name] = kinds[0] if all(kind == kinds[0] for kind in kinds) else UNKNOWN

    def _bindings_of(self, node, scope):
        if isinstance(node, ast.Import):
            return [self._import(node, alias, report=False) for alias in node.names]
        if isinstance(node, ast.ImportFrom):
            return self._import_from(node, report=False)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return [(node.name, UNKNOWN)]
        if isinstance(node, ast.Assign):
            kind = self.evaluate(node.value, scope, report=False)
            pairs = []
            for target in node.targets:
                pairs.extend(_target_names(target, kind))
            return pairs
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            return _target_names(node.target, self.evaluate(node.value, scope, report=False))
        if isinstance(node, (ast.AugAssign, ast.For, ast.AsyncFor)):
            return _target_names(node.target, UNKNOWN)
        if isinstance(node, (ast.With, ast.AsyncWith)):
            pairs = []
            for item in node.items:
                if item.optional_vars is not None:
                    kind = self.evaluate(item.context_expr, scope, report=False)
                    entering = kind and kind[0] == "inst" and kind[1].rsplit(".", 1)[-1] in SELF_ENTERING
                    pairs.extend(_target_names(item.optional_vars, kind if entering else UNKNOWN))
            return pairs
        if isinstance(node, ast.ExceptHandler) and node.name:
            return [(node.name, UNKNOWN)]
        return []

    # -- imports
    def _import(self, node, alias, report):
        """`import a.b.c [as x]` -> (bound name, kind); checks the module path."""
        kind = self._module_kind(alias.name, node, report)
        if alias.asname:
            return alias.asname, kind
        top = alias.name.split(".")[0]
        return top, self._module_kind(top, node, False)

    def _import_from(self, node, report):
        module = self._absolute_module(node)
        base = self._module_kind(module, node, report)
        pairs = []
        for alias in node.names:
            if alias.name == "*":
                pairs.extend(self._star_names(base, module))
                continue
            where = alias if hasattr(alias, "lineno") else node  # aliases have a line from Python 3.10
            kind = self._attribute(base, alias.name, where, report, "{}.{}".format(module, alias.name))
            pairs.append((alias.asname or alias.name, kind))
        return pairs

    def _absolute_module(self, node):
        if not node.level:
            return node.module or ""
        package = self.module_name.split(".")
        package = package[:len(package) - node.level] if len(package) >= node.level else []
        return ".".join(package + ([node.module] if node.module else []))

    def _module_kind(self, module, node, report):
        """The kind of an imported module path (and a violation if it does not exist)."""
        line, parts = node.lineno, module.split(".")
        if parts[0] == "tensorflow" and report:
            self.tf_reference(node)
        if parts[0] == "tensorflow":
            if module.startswith("tensorflow.core"):
                return self._proto_module(module, line, report)
            if module.startswith("tensorflow.python"):
                if report:
                    self.report(line, module, "private TensorFlow module: use the public tf.* name")
                return None
            path = ".".join(["tf"] + parts[1:])
            return self._tf_attribute_path(path, line, module, report)
        if parts[0] == "npu_bridge":
            if report:
                self.npu_reference(node)
            if module in self.npu.modules:
                return ("npu", module)
            if report:
                self._report_missing_npu(module, line, module)
            return None
        if self.checker.repo_module_exists(module):
            return ("repo", module)
        return None

    def _proto_module(self, module, line, report):
        if module in self.checker.proto_modules or any(allowed.startswith(module + ".")
                                                       for allowed in self.checker.proto_modules):
            return ("proto", module)
        if report:
            self.report(line, module, "proto module not known to exist in TF 1.15 (allowed: {})".format(
                ", ".join(sorted(self.checker.proto_modules))))
        return None

    def _proto_attribute(self, path, line, name, report):
        """Inside a _pb2 module anything goes (runtime fields); a module path must be an allowed proto module."""
        if "_pb2" in path.rsplit(".", 1)[0]:
            return ("proto", path)
        return self._proto_module(path, line, report)

    def _star_names(self, base, module):
        """`from npu_bridge.npu_init import *` binds every public name the listing shows for that module."""
        if not base or base[0] != "npu":
            return []
        names = set()
        for name in list(self.npu.signatures) + list(self.npu.classes) + list(self.npu.reexports):
            if _parent(name) == module and not name.rsplit(".", 1)[1].startswith("_"):
                names.add(name.rsplit(".", 1)[1])
        return [(name, ("npu", self.npu.canonical(module + "." + name))) for name in sorted(names)]

    # -- visiting
    def visit_body(self, body, scope):
        for statement in body:
            self.visit(statement, scope)

    def visit(self, node, scope):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in node.decorator_list + _defaults(node.args):
                self.visit(child, scope)
            inner = Scope(scope)
            self.bind_scope(node.body, inner, node.args)
            self.visit_body(node.body, inner)
            return
        if isinstance(node, ast.ClassDef):
            for child in node.bases + node.decorator_list:
                self.visit(child, scope)
            inner = Scope(scope)
            self.bind_scope(node.body, inner)
            for statement in node.body:  # methods see the module scope, not the class body
                self.visit(statement, inner if not isinstance(statement, (ast.FunctionDef,
                                                                          ast.AsyncFunctionDef)) else scope)
            return
        if isinstance(node, ast.Lambda):
            inner = Scope(scope)
            for arg in _argument_names(node.args):
                inner.bindings[arg] = UNKNOWN
            self.visit(node.body, inner)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                self._import(node, alias, report=True)
            return
        if isinstance(node, ast.ImportFrom):
            self._import_from(node, report=True)
            return
        if isinstance(node, (ast.Name, ast.Attribute)):
            self._visit_chain(node, scope)
            return
        if isinstance(node, ast.Call):
            self.evaluate(node, scope, report=True)
        for child in ast.iter_child_nodes(node):
            self.visit(child, scope)

    def _visit_chain(self, node, scope):
        """Resolve a name/attribute chain and count it once as a reference (not each of its prefixes)."""
        kind = self.evaluate(node, scope, report=True)
        if kind is not None and not isinstance(getattr(node, "ctx", None), ast.Store):
            self._count(kind, node)
        inner = node
        while isinstance(inner, ast.Attribute):
            inner = inner.value
        if not isinstance(inner, ast.Name):
            self.visit(inner, scope)

    # -- evaluation
    def evaluate(self, node, scope, report):
        key = id(node)
        if report and key in self.memo:
            return self.memo[key]
        kind = None
        if isinstance(node, ast.Name):
            kind = scope.lookup(node.id)
        elif isinstance(node, ast.Attribute):
            base = self.evaluate(node.value, scope, report)
            kind = self._attribute(base, node.attr, node, report, _source_chain(node))
        elif isinstance(node, ast.Call):
            kind = self._call(node, scope, report)
        if report:
            self.memo[key] = kind
        return kind

    def _count(self, kind, node):
        if kind[0] in ("tf", "proto", "tfmethod", "dsmethod") or (
                kind[0] in ("inst", "ds") and isinstance(node, ast.Attribute)):
            self.tf_reference(node)
        elif kind[0] == "npu":
            self.npu_reference(node)

    def tf_reference(self, node):
        if id(node) not in self.counted and self.sink is not None:
            self.counted.add(id(node))
            self.checker.tf_references += 1

    def npu_reference(self, node):
        if id(node) not in self.counted and self.sink is not None:
            self.counted.add(id(node))
            self.checker.npu_references += 1

    def _attribute(self, base, attr, node, report, name):
        """Kind of `base.attr`, reporting a violation for a name that does not exist."""
        if base is None:
            return None
        line = _last_line(node) if isinstance(node, ast.expr) else node.lineno
        tag = base[0]
        if tag == "tf":
            return self._tf_attribute_path(base[1] + "." + attr, line, name, report)
        if tag == "proto":
            return self._proto_attribute(base[1] + "." + attr, line, name, report)
        if tag == "npu":
            path = self.npu.canonical(base[1] + "." + attr)
            status, scope_path = self.npu.lookup(path)
            if status == "missing":
                if report:
                    self._report_missing_npu(path, line, name, scope_path)
                return None
            return ("npu", path)
        if tag == "repo":
            module = base[1] + "." + attr
            if self.checker.repo_module_exists(module):
                return ("repo", module)
            kind = self.checker.repo_table(base[1]).get(attr)
            return None if kind == UNKNOWN else kind
        if tag == "inst":
            return self._instance_attribute(base[1], attr, line, name, report)
        if tag == "ds":
            return self._dataset_attribute(base[1], attr, line, name, report)
        return None

    def _tf_attribute_path(self, path, line, name, report):
        """Check a tf.* path in 1.15 (and as tf.compat.v2.* for root paths); its kind, or None if invalid."""
        reason = self._tf_problem(path)
        if reason:
            if report:
                self.report(line, name, reason)
            return None
        return ("tf", path)

    def _tf_problem(self, path):
        """Why a tf.* path is not usable on both stacks, or None."""
        suffix = api_suffix(path)
        if "keras" in path.split("."):
            return KERAS_REASON
        if not path.startswith("tf.compat.v2."):
            for pattern, why in TF2_BREAKERS:
                if fnmatch.fnmatchcase(suffix, pattern):
                    return why
        status, scope_path = self.tf.lookup(path)
        if status == "missing":
            return "not in the TF 1.15 API{}".format(self.tf.suggestion(path, scope_path))
        root_only = path.startswith("tf.") and not path.startswith("tf.compat.")
        if root_only and suffix.split(".")[0] not in V2_ROOT_ADDED_LATER:
            v2_path = "tf.compat.v2." + suffix
            if self.tf.lookup(v2_path)[0] == "missing":
                return ("TF 1.x root only: TF 2.x's tf.* is the v2 API and {} is not in 1.15's tf.compat.v2; "
                        "use tf.compat.v1.{}".format(path, suffix))
        return None

    def _instance_attribute(self, class_path, attr, line, name, report):
        suffix = api_suffix(class_path)
        if attr in self.tf.members.get(class_path, ()):
            return ("tfmethod", class_path, attr)
        if suffix in STRICT_MEMBERS:
            if attr in STRICT_MEMBERS[suffix]:
                member_class = STRICT_MEMBERS[suffix][attr]
                return ("inst", "tf.compat.v1." + member_class) if member_class else None
            if report:
                self.report(line, name, "not an attribute of {} in TF 1.15{}".format(
                    class_path, self.tf.suggestion(class_path + "." + attr, class_path)))
        return None

    def _dataset_attribute(self, flavor, attr, line, name, report):
        if attr.startswith("__"):
            return None
        for class_path in _dataset_classes(flavor):
            if attr not in self.tf.members.get(class_path, ()):
                if report:
                    self.report(line, name, "not a method of {} in {}{}".format(
                        class_path, _where(class_path), self.tf.suggestion(class_path + "." + attr, class_path)))
                return None
        return ("dsmethod", flavor, attr)

    def _call(self, node, scope, report):
        func = self.evaluate(node.func, scope, report)
        name = _source_chain(node.func)
        if func is None:
            if report:
                self._check_deterministic_anywhere(node, scope, name)
            return None
        tag = func[0]
        if tag == "tf":
            path = func[1]
            variants = [path]
            if path.startswith("tf.") and not path.startswith("tf.compat."):
                variants.append("tf.compat.v2." + api_suffix(path))
            positional = not _is_class_member(self.tf, path) or path.rsplit(".", 1)[1] in DATASET_SOURCES
            for variant in variants:
                if report:
                    self._check_arguments(node, self.tf.signatures.get(variant), variant, name, positional,
                                          _where(variant))
            return self._call_result(path)
        if tag == "tfmethod":
            if report:
                signature = self.tf.signatures.get(func[1] + "." + func[2])
                self._check_arguments(node, signature, func[1] + "." + func[2], name, True)
            return None
        if tag == "dsmethod":
            flavor, method = func[1], func[2]
            if report:
                for class_path in _dataset_classes(flavor):
                    signature = self.tf.signatures.get(class_path + "." + method)
                    self._check_arguments(node, signature, class_path + "." + method, name, True,
                                          _where(class_path))
            return None if method in DATASET_NOT_RETURNING else ("ds", flavor)
        if tag == "npu":
            if report:
                self._check_arguments(node, self.npu.signature(func[1]), func[1], name, True, "npu_bridge")
            return None
        return None

    def _call_result(self, path):
        """What calling a tf.* path gives: a dataset, an instance of a listed class, or unknown."""
        owner, last = _parent(path), path.rsplit(".", 1)[1]
        flavor = _dataset_flavor(path)
        if flavor and (last in DATASET_CLASSES or (owner.rsplit(".", 1)[-1] in DATASET_CLASSES
                                                   and last in DATASET_SOURCES)):
            return ("ds", flavor)
        if self.tf.is_class(path):
            return ("inst", path)
        return None

    def _check_arguments(self, node, signature, target, name, positional, where="TF 1.15"):
        if signature is None:
            return
        for keyword in node.keywords:
            if keyword.arg is not None and not signature.accepts(keyword.arg):
                self.report(keyword.value.lineno, "{}({}=...)".format(name, keyword.arg),
                            "keyword {!r} not accepted by {} in {}: ({})".format(
                                keyword.arg, target, where, signature.text))
        starred = any(isinstance(arg, ast.Starred) for arg in node.args)
        if positional and not starred and not signature.var_positional \
                and len(node.args) > signature.max_positional:
            self.report(node.lineno, name, "{} takes at most {} positional arguments in {}: ({})".format(
                target, signature.max_positional, where, signature.text))

    def _check_deterministic_anywhere(self, node, scope, name):
        """`.map/.interleave(..., deterministic=...)` is TF 2.x only, whatever the receiver."""
        if not isinstance(node.func, ast.Attribute) or node.func.attr not in ("map", "interleave"):
            return
        for keyword in node.keywords:
            if keyword.arg == "deterministic":
                self.report(keyword.value.lineno, "{}(deterministic=...)".format(name),
                            "Dataset.{} has no 'deterministic' in TF 1.15: set tf.data.Options "
                            "experimental_deterministic (unet_perf.compat.set_dataset_deterministic)".format(
                                node.func.attr))

    def _report_missing_npu(self, path, line, name, scope_path=None):
        if scope_path is None:
            scope_path = _parent(path)
            while scope_path and scope_path not in self.npu.modules:
                scope_path = _parent(scope_path)
        self.report(line, name, "not in the npu_bridge API{}".format(self.npu.suggestion(path, scope_path)))


def _argument_names(arguments):
    names = [arg.arg for arg in getattr(arguments, "posonlyargs", []) + arguments.args + arguments.kwonlyargs]
    names += [extra.arg for extra in (arguments.vararg, arguments.kwarg) if extra is not None]
    return names


def _defaults(arguments):
    return list(arguments.defaults) + [value for value in arguments.kw_defaults if value is not None]


def _target_names(target, kind):
    if isinstance(target, ast.Name):
        return [(target.id, kind)]
    if isinstance(target, (ast.Tuple, ast.List)):
        pairs = []
        for element in target.elts:
            pairs.extend(_target_names(element.value if isinstance(element, ast.Starred) else element,
                                       UNKNOWN))
        return pairs
    return []


def _where(path):
    if path.startswith("tf.compat.v2."):
        return "TF 2.x (whose root tf.* is the v2 API, listed as tf.compat.v2 in 1.15)"
    return "TF 1.15"


def _is_class_member(listing, path):
    owner = _parent(path)
    return owner in listing.names and owner not in listing.modules


def _dataset_flavor(path):
    if path.startswith("tf.compat.v1.data."):
        return "v1"
    if path.startswith("tf.compat.v2.data."):
        return "v2"
    if path.startswith("tf.data."):
        return "root"
    return None


def _dataset_classes(flavor):
    """The listed Dataset classes a dataset of this flavour must satisfy (root: 1.15's v1 and TF 2.x's v2)."""
    return {"v1": ("tf.compat.v1.data.Dataset",), "v2": ("tf.compat.v2.data.Dataset",),
            "root": ("tf.data.Dataset", "tf.compat.v2.data.Dataset")}[flavor]


# ----------------------------------------------------------------------------------------------- CLI
def python_files(paths):
    files = []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
                files.extend(os.path.join(folder, name) for name in sorted(names) if name.endswith(".py"))
        else:
            raise UsageError("no such file or folder: {}".format(path))
    return files


def check_paths(paths, compat_dir, root=REPO_ROOT):
    """Check the .py files under paths; returns the Checker (violations, counts, summary())."""
    tf_listing, npu_listing = load_listings(compat_dir)
    checker = Checker(tf_listing, npu_listing, root)
    for path in python_files(paths):
        checker.check_file(path)
    return checker


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="files or folders (default: unet_perf benchmarks tools)")
    parser.add_argument("--compat_dir", default=os.path.join(REPO_ROOT, "..", "shared", "compat"),
                        help="folder with tf115_api.txt, tf115_signatures.txt, npu_bridge_api.txt")
    parser.add_argument("--root", default=REPO_ROOT, help="repository root (resolves `from unet_perf...`)")
    args = parser.parse_args(argv)
    paths = args.paths or [os.path.join(args.root, name) for name in DEFAULT_PACKAGES
                           if os.path.isdir(os.path.join(args.root, name))]
    try:
        checker = check_paths(paths, args.compat_dir, args.root)
    except UsageError as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    for path, line, name, reason in checker.violations:
        print("{}:{}: {} ({})".format(_display(path), line, name, reason))
    print(checker.summary(), file=sys.stderr if checker.violations else sys.stdout)
    return 1 if checker.violations else 0


def _display(path):
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


if __name__ == "__main__":
    sys.exit(main())

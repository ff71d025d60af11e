"""Name resolution inside one file: which names are bound to which TensorFlow / npu_bridge object, scope by
scope, and the check of every attribute chain and call against the listings (FileVisitor)."""
import ast
import fnmatch

from .listings import api_suffix, parent_of
from .rules import (DATASET_CLASSES, DATASET_NOT_RETURNING, DATASET_SOURCES, KERAS_REASON, SELF_ENTERING,
                    STRICT_MEMBERS, TF2_BREAKERS, V2_ROOT_ADDED_LATER)

UNKNOWN = ("unknown",)


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


def last_line(node):
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
            if parent_of(name) == module and not name.rsplit(".", 1)[1].startswith("_"):
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
        line = last_line(node) if isinstance(node, ast.expr) else node.lineno
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
        owner, last = parent_of(path), path.rsplit(".", 1)[1]
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
            scope_path = parent_of(path)
            while scope_path and scope_path not in self.npu.modules:
                scope_path = parent_of(scope_path)
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
    owner = parent_of(path)
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

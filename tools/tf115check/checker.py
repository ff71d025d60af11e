"""The checker of a set of files: parse each, run the resolver, honour the TF-2-only marker in compat.py, count,
and summarise."""
import ast
import os

from .listings import DATA_DIR, UsageError, load_listings
from .resolver import FileVisitor, Scope, last_line
from .rules import MARKER, MARKER_FILE, PROTO_MODULES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
                lines.update(range(node.body[0].lineno, last_line(node.body[-1]) + 1))
            elif not hasattr(node, "body"):
                lines.update(range(node.lineno, last_line(node) + 1))
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


def python_files(paths):
    """The .py files of `paths` (files, or folders walked in sorted order without hidden folders)."""
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


def check_paths(paths, compat_dir=DATA_DIR, root=REPO_ROOT):
    """Check the .py files under paths; returns the Checker (violations, counts, summary())."""
    tf_listing, npu_listing = load_listings(compat_dir)
    checker = Checker(tf_listing, npu_listing, root)
    for path in python_files(paths):
        checker.check_file(path)
    return checker

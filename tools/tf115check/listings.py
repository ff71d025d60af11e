"""The API listings and the questions asked of them: does a tf.* / npu_bridge name exist on the Ascend stack,
which keywords does its signature take, what is a close name for a typo.

The listings ship in data/ (tf115_signatures.txt gzip-compressed, to keep every tracked file small; data/README.md
says how they were made); --compat_dir points at another copy, compressed or not.
"""
import difflib
import gzip
import os
import re

from .rules import COMPLETE_CLASSES, STRICT_MEMBERS, V1_ROOT

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
LISTING_FILES = ("tf115_api.txt", "tf115_signatures.txt", "npu_bridge_api.txt")


class UsageError(Exception):
    """A problem with how the checker was called (missing listings, bad path): one line, exit 2."""


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


def parent_of(path):
    return path.rsplit(".", 1)[0] if "." in path else ""


def prefixes_of(path):
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
        self.modules = set(parent_of(name) for name in self.names if "." in name)
        self.members = {}
        for name in self.signatures:
            owner = parent_of(name)
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
        candidates = set(name.rsplit(".", 1)[1] for name in self.names if parent_of(name) == scope_path)
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
                self.modules.update(prefixes_of(module))
                if source.startswith("npu_bridge"):
                    self.modules.update(prefixes_of(source))
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
            owner = parent_of(name)
            module = parent_of(owner) if owner in self.classes else owner
            if name not in self.classes:
                self.modules.update(prefixes_of(module))
        for klass in self.classes:
            self.modules.update(prefixes_of(parent_of(klass)))

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
            if parent_of(name) == scope_path:
                names.add(name.rsplit(".", 1)[1])
        close = difflib.get_close_matches(missing_path.rsplit(".", 1)[1], sorted(names), n=1)
        return "; did you mean {}.{}?".format(scope_path, close[0]) if close else ""


def api_suffix(path):
    """The path below the version root: tf.compat.v1.data.Options -> data.Options."""
    for root in ("tf.compat.v1.", "tf.compat.v2.", "tf."):
        if path.startswith(root):
            return path[len(root):]
    return path


def load_listings(compat_dir=DATA_DIR):
    """(TfListing, NpuListing) from the three files of LISTING_FILES in compat_dir, each plain or as name.gz."""
    texts = []
    for name in LISTING_FILES:
        path = os.path.join(compat_dir, name)
        if os.path.isfile(path):
            with open(path) as handle:
                texts.append(handle.read().splitlines())
        elif os.path.isfile(path + ".gz"):
            with gzip.open(path + ".gz", "rt") as handle:
                texts.append(handle.read().splitlines())
        else:
            raise UsageError("API listing not found: {}; pass --compat_dir DIR (the folder with {})".format(
                path, ", ".join(LISTING_FILES)))
    return TfListing(texts[0], texts[1]), NpuListing(texts[2])

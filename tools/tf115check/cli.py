"""`python tools/check_tf115.py [paths...] [--compat_dir DIR] [--root DIR]`: the checker's command line."""
import argparse
import os
import sys

from .checker import REPO_ROOT, check_paths
from .listings import DATA_DIR, LISTING_FILES, UsageError

DEFAULT_PACKAGES = ("unet_perf", "benchmarks", "tools")


def main(argv=None):
    """Check `argv` (paths, --compat_dir, --root); print violations and the summary. Returns the exit code:
    0 clean, 1 violations, 2 a usage error such as a missing listing."""
    package_doc = sys.modules[__package__].__doc__
    parser = argparse.ArgumentParser(description=package_doc.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("paths", nargs="*", help="files or folders (default: unet_perf benchmarks tools)")
    parser.add_argument("--compat_dir", default=DATA_DIR,
                        help="folder with {} (each may be gzip-compressed as NAME.gz; default: the copies in "
                             "tools/tf115check/data)".format(", ".join(LISTING_FILES)))
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

"""An --output folder written as a whole, the same way by predict, export and pack.

    with OutputFolder(args.output, args.overwrite, owns=..., command="predict") as staging:
        ... write every file into `staging` ...

- A folder already holding outputs is refused unless --overwrite; even then only a folder holding nothing but what
  this command writes (`owns(name)`) is replaced, never files the command did not write.
- The files are written into a hidden staging folder inside --output and moved into place (renames within one
  folder) only when the block succeeded: a failure before that leaves the previous outputs untouched.
- On any failure (also Ctrl-C) the staging folder is removed, and so are --output and its parents if this run
  created them: a failed command leaves nothing behind, and nothing that existed before is touched.
"""
import os
import shutil
import tempfile

from unet_perf.config import str2bool
from unet_perf.errors import UserError

STAGING_PREFIX = ".staging-"
REPLACED_PREFIX = ".replaced-"


def add_overwrite_flag(parser, help):
    """--overwrite (alone, or --overwrite true/false as pack has always taken it)."""
    parser.add_argument("--overwrite", nargs="?", const=True, default=False, type=str2bool, metavar="BOOL",
                        help=help)
    return parser


def staging_path(path, suffix):
    """The staging folder of an OutputFolder(path, ..., staging_suffix=suffix)."""
    return os.path.join(path, STAGING_PREFIX + suffix)


def _leftover(name):
    """A staging or replaced folder of an earlier run that was killed before it could clean up."""
    return name.startswith(STAGING_PREFIX) or name.startswith(REPLACED_PREFIX)


class OutputFolder(object):
    """Context manager: `with OutputFolder(path, overwrite, owns) as staging:` (see the module docstring).

    owns(name) -> True for a name of the folder this command writes (checked before --overwrite replaces);
    last: names moved out first and in last (a manifest), so a half-moved folder never looks complete.
    staging_suffix: a fixed name for the staging folder (STAGING_PREFIX + suffix) that other processes writing
    into it can derive (several predict workers); default a random one.
    """

    def __init__(self, path, overwrite, owns, last=(), command="this command", staging_suffix=None):
        self.path, self.overwrite, self.owns, self.last, self.command = path, overwrite, owns, last, command
        self.staging_suffix = staging_suffix
        self.created, self.staging = [], None

    def __enter__(self):
        self._check()
        self.created = _make_dirs(self.path)
        try:
            if self.staging_suffix is None:
                self.staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.path)
            else:
                self.staging = staging_path(self.path, self.staging_suffix)
                os.mkdir(self.staging)
        except OSError as err:
            self._remove_created()
            raise UserError("cannot write into --output {} ({}); choose a writable folder".format(self.path, err))
        return self.staging

    def __exit__(self, kind, err, traceback):
        if kind is None:
            try:
                self._commit()
            except BaseException:
                self._discard()
                raise
        else:
            self._discard()
        return False

    def _check(self):
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UserError("--output {} is a file; pass a folder".format(self.path))
        names = [name for name in _listdir(self.path) if not _leftover(name)]
        if not names:
            return
        if not self.overwrite:
            raise UserError("--output {} is not empty; choose a new folder or pass --overwrite to replace what "
                            "{} wrote there".format(self.path, self.command))
        strangers = sorted(name for name in names if not self.owns(name))
        if strangers:
            raise UserError("--output {} holds {}, which {} did not write; choose another folder (--overwrite "
                            "replaces only {}'s own outputs)".format(self.path, strangers[0], self.command,
                                                                     self.command))

    def _commit(self):
        """Move the previous outputs aside, the new ones in (undone on failure), then delete the previous."""
        staged = os.path.basename(self.staging)
        old = [name for name in _listdir(self.path) if name != staged and (self.owns(name) or _leftover(name))]
        new = os.listdir(self.staging)
        trash = tempfile.mkdtemp(prefix=REPLACED_PREFIX, dir=self.path)
        moved_out, moved_in = [], []
        try:
            for name in _ordered(old, self.last, last_first=True):
                os.replace(os.path.join(self.path, name), os.path.join(trash, name))
                moved_out.append(name)
            for name in _ordered(new, self.last, last_first=False):
                os.replace(os.path.join(self.staging, name), os.path.join(self.path, name))
                moved_in.append(name)
        except BaseException:
            for name in reversed(moved_in):
                os.replace(os.path.join(self.path, name), os.path.join(self.staging, name))
            for name in reversed(moved_out):
                os.replace(os.path.join(trash, name), os.path.join(self.path, name))
            os.rmdir(trash)
            raise
        os.rmdir(self.staging)
        shutil.rmtree(trash, ignore_errors=True)

    def _discard(self):
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        self._remove_created()

    def _remove_created(self):
        for path in reversed(self.created):
            try:
                os.rmdir(path)  # only when empty: never anything another process put there meanwhile
            except OSError:
                break


def _listdir(path):
    return os.listdir(path) if os.path.isdir(path) else []


def _ordered(names, last, last_first):
    """`names` with those in `last` at the front (last_first) or at the end."""
    tail = [name for name in names if name in last]
    rest = [name for name in names if name not in last]
    return tail + rest if last_first else rest + tail


def _make_dirs(path):
    """Create `path` and missing parents; returns the folders created, outermost first."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.exists(current):
        missing.append(current)
        current = os.path.dirname(current)
    created = []
    try:
        for folder in reversed(missing):
            os.mkdir(folder)
            created.append(folder)
    except OSError as err:
        for folder in reversed(created):
            os.rmdir(folder)
        raise UserError("cannot create --output {} ({}); choose a writable folder".format(path, err))
    return created

"""How much TensorFlow may print, decided before it is imported (unet_perf.compat imports it through here).

By default a command's stderr holds only what the user needs: TensorFlow's C++ logging is set to FATAL only
(TF_CPP_MIN_LOG_LEVEL=3, which hides e.g. `failed call to cuInit` on a CPU machine; real errors still reach the
user as Python exceptions), and the lines absl prints while TensorFlow 2.x loads, before its logging is set up
("All log messages before absl::InitializeLog()...", `I0000 ... cudart_stub.cc] Could not find cuda drivers`),
which no environment variable hides, are filtered out of what the import writes to stderr. `--verbose` on any
CLI (or UNET_PERF_VERBOSE=1, inherited by child processes) shows TensorFlow's own output unchanged.
No TensorFlow import in this module.
"""
import os
import re
import sys
import tempfile

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "UNET_PERF_VERBOSE"
QUIET_CPP_LEVEL = "3"  # TF_CPP_MIN_LOG_LEVEL: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR (same in 1.15 and 2.x)

# What TensorFlow's native libraries print while loading: absl's pre-initialisation banner and absl/glog lines
# ("I0000 00:00:1796426226.678906    3669 cudart_stub.cc:31] ...", "E1203 12:00:00.123456 ...").
_IMPORT_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                           r"|[IWE]\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] )")

_verbose_requested = []  # set by use_verbose_flag: a plain Python list, not process environment (tests stay clean)


def add_verbose_flag(parser):
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show TensorFlow's own log lines on stderr (hidden by default)")
    return parser


def use_verbose_flag(argv):
    """Note whether this command's own flags (before a `--`) include --verbose; run_cli calls it before main,
    so the choice is made before any TensorFlow import."""
    own = argv[:argv.index("--")] if "--" in argv else argv
    if VERBOSE_FLAG in own:
        _verbose_requested.append(True)


def verbose():
    return bool(_verbose_requested) or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def is_import_noise(line):
    return bool(_IMPORT_NOISE.match(line))


def import_tensorflow():
    """`import tensorflow`, quietly unless verbose(); returns the module."""
    if verbose():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # also when a quiet parent process passed its level down
        import tensorflow
        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_CPP_LEVEL)
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    return _import_filtering_stderr()


def _import_filtering_stderr():
    """Import TensorFlow with file descriptor 2 sent to a temporary file (the native libraries write there
    directly), then replay what was written without the loading noise; everything when the import fails."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor at all (a daemon): nothing to keep quiet
        import tensorflow
        return tensorflow
    failed = True
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(True) if failed or not is_import_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
    return tensorflow

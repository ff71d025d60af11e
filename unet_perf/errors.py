"""The one error type a user can cause, and the CLI wrapper that turns it into a one-line message and exit 2."""
import re
import sys

from unet_perf.tf_logging import use_verbose_flag


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad data). The message names the file and the fix."""


def relayed_user_error(err):
    """The message of a UserError raised inside a tf.numpy_function (the shard reader, the OpenCV engine), which
    TensorFlow re-raises as an OpError with the Python traceback in its text; None for any other error."""
    if not type(err).__module__.startswith("tensorflow"):
        return None
    match = re.search(r"UserError: ([^\n]+)", str(err))
    return match.group(1) if match else None


def run_cli(main, argv=None):
    """Run `main(argv)`; print a UserError (also one relayed by TensorFlow) as one line on stderr and exit 2; a
    Ctrl-C that reaches here prints "interrupted" and exits 130. --verbose among the flags is noted first, before main can import TensorFlow (unet_perf.tf_logging)."""
    use_verbose_flag(list(sys.argv[1:] if argv is None else argv))
    try:
        code = main(argv)
    except UserError as err:
        print("error: {}".format(err), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside training's own handling (e.g. while TensorFlow loads): no traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        message = relayed_user_error(err)
        if message is None:
            raise
        print("error: {}".format(message), file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)

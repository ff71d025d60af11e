"""The one error type a user can cause, and the CLI wrapper that turns it into a one-line message and exit 2."""
import sys


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad data). The message names the file and the fix."""


def run_cli(main, argv=None):
    """Run `main(argv)`; print a UserError as one line on stderr and exit 2 (no traceback)."""
    try:
        code = main(argv)
    except UserError as err:
        print("error: {}".format(err), file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)

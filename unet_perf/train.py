"""`python -m unet_perf.train [flags]`: train a U-Net (or resume the run in --model_dir).

Flags are parsed and checked before TensorFlow is imported, so `--help` and bad flags answer at once.
Without --data_path it trains on the built-in synthetic set. Exit codes: 0 finished, already finished or
interrupted by SIGINT/SIGTERM (after writing a checkpoint); 2 for any problem the user can fix, printed as
one `error: ...` line (bad flag, bad data, unwritable or incompatible --model_dir, full disk, diverged loss).
"""
import sys

from unet_perf.config import config_from_args
from unet_perf.cpu_allocator import prefer_bfc_allocator
from unet_perf.errors import run_cli

DESCRIPTION = ("Train a U-Net for EM membrane segmentation (graph mode, K steps per Session.run). Resumes from "
               "the newest checkpoint in --model_dir; writes config.json, checkpoints, TensorBoard summaries and "
               "summary.json there.")


def train_from_args(argv=None):
    cfg = config_from_args(argv, description=DESCRIPTION)
    prefer_bfc_allocator()  # before TensorFlow allocates: see unet_perf.cpu_allocator
    from unet_perf.compat import v1  # imports TensorFlow: only after the flags are known to be good
    from unet_perf.training.run import train

    v1.logging.set_verbosity(v1.logging.ERROR)  # TF's own deprecation notices are noise for a CLI user
    train(cfg)
    return 0


def main(argv=None):
    """Console entry point (setup.py `unet-perf-train`) and `python -m unet_perf.train`: exits 0 or 2."""
    run_cli(train_from_args, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()

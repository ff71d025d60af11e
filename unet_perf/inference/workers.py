"""Several predict workers over one input (`python -m unet_perf.launch --nproc N --entry unet_perf.predict -- ...`,
or any TF_CONFIG cluster): which pages each one predicts and how they agree.

Split: rank r of N predicts the pages r, r + N, r + 2N, ... of the whole input (every page of every file, in the
order one process predicts them). A stride rather than contiguous blocks: sizes and content drift along a stack or
a sorted folder (e.g. the large sections at one end), and a stride spreads them evenly over the workers.

Each worker writes the per-page files of its pages into rank 0's staging folder of --output; once every page is
written, rank 0 writes the stacks from those files and commits --output (unet_perf.predict).

Agreement: TensorFlow's collective ops over its gRPC runtime, as the trainer's workers agree
(backends.collective): two all-reduces (maximum) of a few float64 values, each a barrier.
  1. start: rank 0 has prepared --output. Its staging folder is named from a random token rank 0 contributes (the
     others contribute 0, so the maximum is rank 0's token; 0 means rank 0 failed). Every worker runs the same
     flags on the same input (a fingerprint f agrees when max(f) == -max(-f)).
  2. finish: every worker has written its pages (a worker that failed votes 1, then raises its own error), so a
     failure anywhere makes every worker fail and rank 0 leave --output untouched. The slowest worker's pages
     are waited for at most max(1 h, --collective_timeout) (the collectives' first-run bound).
"""
import hashlib
import json
import os
import random

from unet_perf.errors import UserError
from unet_perf.storage.output_folder import staging_path

# Flags that may differ between machines (their paths); everything else must agree.
LOCAL_FLAGS = ("model_dir", "input", "output")
_TOKEN_BITS = 52  # exact in a float64, which the collective carries


def share_of(plan, rank, size):
    """The entries of predict.output_plan holding the pages rank `rank` of `size` predicts (pages rank::size of
    the whole input), without stacks (prefix None): rank 0 writes those once every page is done."""
    share, first = [], 0
    for path, pages, names, _ in plan:
        mine = [index for index in range(len(pages)) if (first + index) % size == rank]
        first += len(pages)
        if mine:
            share.append((path, [pages[index] for index in mine], [names[index] for index in mine], None))
    return share


def run_fingerprint(args, plan):
    """A 52-bit integer of the flags (without LOCAL_FLAGS) and the input's file names and page shapes."""
    flags = dict((key, value) for key, value in sorted(vars(args).items()) if key not in LOCAL_FLAGS)
    inputs = [(os.path.basename(path), [list(page.shape) for page in pages]) for path, pages, _, _ in plan]
    digest = hashlib.sha256(json.dumps([flags, inputs], sort_keys=True, default=str).encode("utf-8"))
    return int(digest.hexdigest(), 16) % (2 ** _TOKEN_BITS)


def new_token():
    """Rank 0's random token of this run (1 .. 2^52 - 1): names the staging folder every worker writes into."""
    return random.SystemRandom().randrange(1, 2 ** _TOKEN_BITS)


def staging_suffix(token):
    return "predict-{:013x}".format(token)


class PredictTeam(object):
    """This predict worker's view of the job: the two barriers of the module doc over HostCollectives."""

    def __init__(self, cluster, timeout_sec):
        from unet_perf.backends.collective import HostCollectives  # imports TensorFlow

        self.cluster = cluster
        self.collectives = HostCollectives(cluster, timeout_sec)
        self.collectives.start()  # port checked, bounded wait until every peer's server listens

    def describe(self):
        return self.cluster.describe(self.cluster.rank)

    def start(self, fingerprint, token, output):
        """Barrier 1; returns the staging folder rank 0 prepared in `output`. token: rank 0's (0 when it failed),
        0 on the others."""
        values = self.collectives.all_max([float(fingerprint), -float(fingerprint), float(token)],
                                          "waiting for every worker to start predicting")
        if values[0] != -values[1]:
            raise UserError("{}: the workers do not all run the same predict flags on the same input (fingerprint "
                            "{:x} here); start every worker with the same command".format(
                                self.describe(), fingerprint))
        if values[2] == 0:
            raise UserError("{}: worker 0 could not prepare --output {} (its error is above); nothing was "
                            "predicted".format(self.describe(), output))
        staging = staging_path(output, staging_suffix(int(values[2])))
        if not os.path.isdir(staging):
            raise UserError("{}: worker 0's staging folder {} is not visible here; give every worker the same "
                            "--output on a shared file system".format(self.describe(), staging))
        return staging

    def finish(self, failed):
        """Barrier 2: True when any worker failed to write its pages."""
        values = self.collectives.all_max([1.0 if failed else 0.0], "waiting for every worker to finish its pages",
                                          first=True)
        return values[0] > 0

    def vote_failed(self):
        """Barrier 2 for a worker whose pages failed (it raises its own error next): a lost peer changes nothing."""
        try:
            self.finish(failed=True)
        except UserError:
            pass

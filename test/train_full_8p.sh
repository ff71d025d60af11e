#!/usr/bin/env bash
# ModelZoo entry point: the harness runs test/train_*.sh from the network's folder (this repo's root, named after the
# network, e.g. 2D_Unet_unet_perf_for_TensorFlow). The script of the same name in tools/ does the work; see
# tools/modelzoo_lib.sh for the arguments and the files it writes under test/output/.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../tools/$(basename "${BASH_SOURCE[0]}")" "$@"

#!/usr/bin/env bash
# ModelZoo performance run (1 device): 5 epochs of 300 steps, batch 2, sink mode K=10.
#   tools/train_performance_1p.sh --data_path=DIR [--batch_size=N] [train flags, e.g. --max_steps=200]
# Run from the model root or its test/ folder (ModelZoo cur_path rules, see modelzoo_lib.sh). Writes
# test/output/$ASCEND_DEVICE_ID/{train_$ASCEND_DEVICE_ID.log, train_<CaseName>_loss.txt, <CaseName>.log} with
# CaseName = <Network>_bs<B>_1p_perf and prints "Final Performance images/sec", "E2E Training Duration sec".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/modelzoo_lib.sh"
modelzoo_run perf --train_epochs=5 --steps_per_epoch=300 --iterations_per_loop=10 --save_checkpoints_steps=500 \
    -- "$@"

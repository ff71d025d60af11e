#!/usr/bin/env bash
# ModelZoo full training on 8 devices (one process each): 300 epochs of 300 steps, batch 2 per device, K=10.
#   tools/train_full_8p.sh --data_path=DIR [--rank_table=FILE] [--server_index=N] [--batch_size=N] [train flags]
# Without --rank_table a one-server table of RANK_SIZE (default 8) devices is generated in test/output/. Writes
# test/output/<rank>/train_<rank>.log per rank and, from rank 0, test/output/0/{train_<CaseName>_loss.txt,
# <CaseName>.log} with CaseName = <Network>_bs<B>_8p_acc; prints "Final Performance images/sec",
# "E2E Training Duration sec", "Final Train Accuracy". See modelzoo_lib.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/modelzoo_lib.sh"
modelzoo_run_8p acc --train_epochs=300 --steps_per_epoch=300 --iterations_per_loop=10 --save_checkpoints_steps=3000 \
    -- "$@"

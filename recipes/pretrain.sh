#!/usr/bin/env bash
# Pretrain with a recipe on every CPU core or GPU of this machine.
#   recipes/pretrain.sh pretrain_dna_tiny                    # one process
#   NPROC=2 recipes/pretrain.sh pretrain_dna_tiny            # two processes (gloo on CPU)
#   recipes/pretrain.sh pretrain_dna_tiny --resume latest    # continue the last run
set -euo pipefail
nproc=${NPROC:-1}
if [ "$nproc" -gt 1 ]; then
  exec torchrun --nproc_per_node "$nproc" -m biotransformer pretrain "$@"
fi
exec biotransformer pretrain "$@"

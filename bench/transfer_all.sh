#!/usr/bin/env bash
# Run bench/transfer.py over tasks x sizes x seeds, one part at a time (each appends its rows).
#   bench/transfer_all.sh "10" "0 1 2"            # every task, 10 per class, seeds 0-2
#   STRATEGIES=linear_probe,lp_ft bench/transfer_all.sh "60" "0"
set -u
cd "$(dirname "$0")/.."
sizes=${1:-"10 60"}; seeds=${2:-"0 1 2"}
tasks=${TASKS:-"cifar10 rsscn7_aerial pbc_bloodcells dtd_textures quickdraw_sketches fashion_mnist"}
for n in $sizes; do for seed in $seeds; do for task in $tasks; do
  python bench/transfer.py run --task "$task" --n "$n" --seed "$seed" --strategies "${STRATEGIES:-all}" || exit 1
done; done; done

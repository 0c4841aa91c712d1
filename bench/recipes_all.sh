#!/usr/bin/env bash
# Run bench/recipes.py over networks x tasks x sizes x seeds, one part at a time; each part appends
# its rows and a part already recorded is skipped, so the loop resumes where it stopped.
#   bench/recipes_all.sh                                 # reference arms, 10 then 60 per class, seed 0
#   ARMS=graft SIZES="10" bench/recipes_all.sh            # graft's arms only
#   FORCE=1 ARMS=graft TASKS=cifar10 bench/recipes_all.sh # rerun graft's arms (after a recipe change)
set -u
cd "$(dirname "$0")/.."
sizes=${SIZES:-"10 60"}; seeds=${SEEDS:-"0"}; arms=${ARMS:-"reference"}
networks=${NETWORKS:-"mobilenet_v1 efficientnet_lite0"}
tasks=${TASKS:-"cifar10 rsscn7_aerial pbc_bloodcells dtd_textures quickdraw_sketches fashion_mnist eurosat_satellite gtsrb_signs chest_xray_pneumonia lc25000_lung_histopathology trashnet_waste"}
for n in $sizes; do for seed in $seeds; do for task in $tasks; do for net in $networks; do
  python bench/recipes.py run --network "$net" --task "$task" --n "$n" --seed "$seed" --arms "$arms" \
      --strategies "${STRATEGIES:-all}" ${FORCE:+--force} || echo "FAILED: $net $task $n $seed" >&2
done; done; done; done

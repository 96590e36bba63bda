#!/usr/bin/env bash
# The runs of results_refine.md (issue 17): twin refinement on optical_vowels with the neural twin and on
# mechanical_digits with the physics twin, and perturbative (SPSA) training against PAT at the same device-sample
# budget on electronic_digits. Simulated benches. Finished runs are skipped, so the script continues where it stopped.
#   PNN_DATA_DIR=../shared/data experiments/refine_acceptance.sh optical [EPOCHS] [SEEDS...]
#   PNN_DATA_DIR=../shared/data experiments/refine_acceptance.sh mechanical [EPOCHS] [SEEDS...]
#   PNN_DATA_DIR=../shared/data experiments/refine_acceptance.sh electronic
#   PNN_DATA_DIR=../shared/data experiments/refine_acceptance.sh optical-perturbative [SEEDS...]   (after "optical")
#   PNN_DATA_DIR=../shared/data experiments/refine_acceptance.sh optical-reference [EPOCHS] [SEEDS...]
#     (PAT with the physics twin and with the perfect twin, the simulator's noiseless physics: what the refined
#     neural twin is measured against)
# Each run is a run folder under $OUT (default runs/refine17/); the twins are calibrated once into
# runs/refine17/artifacts/, whatever $OUT, so that runs at other epochs (OUT=runs/refine17-100 ... optical 100) use
# the same twins.
set -euo pipefail
OUT=${OUT:-runs/refine17}
ARTIFACTS=runs/refine17/artifacts

# the SPSA epochs that consume the device samples of a PAT run's twin data and training:
# budget / (2 forwards per step x N training samples x depth)
spsa_epochs() {
  python - "$1/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
n = s["provenance"]["data"]["n_train"]
print(round(s["device_samples_budget"] / (2 * n * s["depth"])))
EOF
}

finished() { grep -qs '"status": "finished"' "$1/summary.json"; }  # a run folder whose run ended

mkdir -p "$OUT"  # the runs' logs go there before pnn creates their folders
what=${1:-optical}
if [ "$what" = optical ] || [ "$what" = mechanical ]; then
  experiment=${what}_vowels twin=neural default_epochs=100
  if [ "$what" = mechanical ]; then experiment=mechanical_digits twin=physics default_epochs=20; fi
  epochs=${2:-$default_epochs}
  shift $(( $# > 2 ? 2 : $# ))
  seeds=${*:-0 1 2}
  art="artifacts_dir=$ARTIFACTS/$experiment"
  for seed in $seeds; do
    for mode in pat in_silico; do
      for refine in false true; do
        suffix=""
        if [ "$refine" = true ]; then suffix="+refine"; fi
        name="$experiment-$mode$suffix-seed$seed"
        finished "$OUT/$name" && continue
        pnn run "experiments/$experiment.yaml" --simulate --mode "$mode" --twin "$twin" --epochs "$epochs" \
          --set "$art" --set "seed=$seed" --set "twin.refine.enabled=$refine" --out "$OUT/$name" \
          > "$OUT/$name.log" 2>&1 || echo "$name failed"
      done
    done
  done
elif [ "$what" = optical-perturbative ]; then
  shift
  for seed in ${*:-0 1 2}; do  # SPSA at the budget of the same seed's PAT run with the neural twin
    name="optical_vowels-perturbative-seed$seed"
    finished "$OUT/$name" && continue
    epochs=$(spsa_epochs "$OUT/optical_vowels-pat-seed$seed")
    pnn run experiments/optical_vowels.yaml --simulate --set training.mode=perturbative --set "seed=$seed" \
      --epochs "$epochs" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 || echo "$name failed"
  done
elif [ "$what" = optical-reference ]; then
  epochs=${2:-100}
  shift $(( $# > 2 ? 2 : $# ))
  for seed in ${*:-0 1 2}; do
    for twin in physics perfect; do
      name="optical_vowels-pat-$twin-seed$seed"
      finished "$OUT/$name" && continue
      pnn run experiments/optical_vowels.yaml --simulate --twin "$twin" --epochs "$epochs" --set "seed=$seed" \
        --set "artifacts_dir=$ARTIFACTS/optical_vowels" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 \
        || echo "$name failed"
    done
  done
else
  art="artifacts_dir=$ARTIFACTS/electronic_digits"
  pnn run experiments/electronic_digits.yaml --simulate --out "$OUT/electronic_digits-pat" --set "$art" \
    > "$OUT/electronic_digits-pat.log" 2>&1
  epochs=$(spsa_epochs "$OUT/electronic_digits-pat")
  pnn run experiments/electronic_digits.yaml --simulate --out "$OUT/electronic_digits-perturbative" \
    --set training.mode=perturbative --set training.spsa.A=20 --epochs "$epochs" \
    > "$OUT/electronic_digits-perturbative.log" 2>&1
fi

#!/usr/bin/env bash
# The original README's experiment with the correct objective, on real MNIST: latent_dim 2,
# 10,000 iterations, flows of length 16, static and amortized; then the same static runs with
# --objective seed. Prints the test-set table (ELBO and IW log-likelihood, K=1000) at the end.
#   bash benchmarks/run_latent2.sh [OUT_DIR]        (about 1.5 hours on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/latent2}"
common=(--latent_dim 2 --max_iter 10000 --length 16 --iw_samples 1000 --out_dir "$out")
for flow in none planar radial householder nice; do
  python static_flow_vae.py "${common[@]}" --flow "$flow"
  python dynamic_flow_vae.py "${common[@]}" --flow "$flow"
done
for flow in none planar radial householder nice; do
  python static_flow_vae.py "${common[@]}" --flow "$flow" --objective seed
done
python benchmarks/results_table.py "$out/logs"

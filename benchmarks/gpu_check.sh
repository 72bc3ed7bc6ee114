#!/usr/bin/env bash
# The CUDA checks in one run (about 9 minutes on one H100), printed as one report:
#
#   bash benchmarks/gpu_check.sh [--dry_run]
#
#   1. tests     the CUDA test cases (pytest -k 'cuda or sync_bn_steps': every case parametrized on the
#                cuda device, see tests/devices.py, and the CUDA-only --sync_bn test)
#   2. steps     bench_train.py --device cuda --steps_only: it/s of the eager step with a host sync per
#                step, eager without it, --compile 1, --compile 2 (CUDA graphs) and eager bf16, for the
#                static MLP planar-16 (latent 2), the amortized MLP planar-16 (latent 40) and the conv VAE
#                at its defaults on 32x32x3 images; each step's GFLOP/s against torch.mm in the same run
#   3. IW        importance-weighted evaluation, K = 5000, of the 10,000 MNIST test images
#   4. amortized bench_amortized.py --device cuda --steps_only --modes eager: it/s of the latent-40 amortized
#                step of planar and of the Sylvester flows at M = D (and orthogonal at M = 16), and the hours
#                of a full-budget run of each on this GPU
#   5. run       a timed 20,000-iteration dynamic_flow_vae.py --latent_dim 40 --flow planar --length 16
#                run, and the projected time of 1,000 epochs (390,000 iterations)
#
# Targets (one H100): the latent-40 amortized planar-16 MLP step at batch 128 >= 3,000 it/s; IW K=5000
# over the 10,000 test images <= 10 s; the eager step without the host sync >= 1.5x the step with it.
#
# MNIST comes from $FLOW_VAE_DATA (else ./data) when it is there; otherwise random images of MNIST's
# shape and split sizes are written to a temporary folder (timings do not depend on the pixels).
# --dry_run runs every step on the CPU with tiny sizes (few iterations, small K, few images, a small
# hidden layer; the pytest call is the same, and its CUDA cases skip), so that a typo cannot fail on
# the GPU. Each step has a time limit (tests 150 s, steps 210 s, amortized 60 s, run 120 s: 9 minutes in all); one that
# fails or runs out (exit 124) is reported and the others still run. RUN_FLAGS adds flags to the run
# (e.g. RUN_FLAGS='--compile 2'). Exit code: the number of steps that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DRY=0
[[ ${1:-} == --dry_run ]] && DRY=1
[[ $# -gt 1 || ( $# -eq 1 && $DRY -eq 0 ) ]] && { echo "usage: bash benchmarks/gpu_check.sh [--dry_run]" >&2; exit 2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failed=0
report=()

if ((DRY)); then
  DEVICE=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # tiny models: one thread, and no spinning on a busy machine
  STEPS=(--iters 13 --batch_size 16 --hidden_dim 16 --mm_size 128 --sync_repeats 1 --iw 5 20
         --variants eager+sync,eager,graphs,bf16)
  COMPILED=(--rows 0 --variants compiled)   # torch.compile once on the CPU, where it is slow
  RUN=(--max_iter 30 --log_every 10 --batch_size 16 --hidden_dim 16 --length 2)
  ITERS_RUN=30
  AMORTIZED=(--variants planar orthogonal-16 --iters 2 --rounds 1)
else
  DEVICE=cuda
  STEPS=(--iters 210 --sync_repeats 3 --iw 5000 10000)
  COMPILED=()
  RUN=(--max_iter 20000 --log_every 1000)
  ITERS_RUN=20000
  AMORTIZED=(--variants planar orthogonal-16 orthogonal-40 householder-8 triangular --iters 10 --rounds 3)
fi

section() {   # NAME LIMIT COMMAND...: run it within LIMIT seconds, its output under a header; count a failure
  local name=$1 limit=$2 start code
  shift 2
  echo "==== $name: $*"
  start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tail -n 60
  code=${PIPESTATUS[0]}
  echo "---- $name: exit $code in $((SECONDS - start)) s"
  report+=("$(printf '%-8s exit %3s %5s s' "$name" "$code" "$((SECONDS - start))")")
  ((code == 0)) || failed=$((failed + 1))
  return 0
}

DATA=${FLOW_VAE_DATA:-./data}
if [[ ! -f $DATA/MNIST/raw/t10k-images-idx3-ubyte && ! -f $DATA/MNIST/raw/t10k-images-idx3-ubyte.gz ]]; then
  DATA=$TMP/data
  if ((DRY)); then SIZES='256, 64'; else SIZES='60000, 10000'; fi
  $PY - "$DATA" "$SIZES" <<'EOF'
import os, sys
import numpy as np
sys.path.insert(0, '.')
from datasets import write_idx
root, (n_train, n_test) = sys.argv[1], map(int, sys.argv[2].split(','))
raw = os.path.join(root, 'MNIST', 'raw')
os.makedirs(raw)
g = np.random.default_rng(0)
for prefix, n in (('train', n_train), ('t10k', n_test)):
    write_idx(os.path.join(raw, f'{prefix}-images-idx3-ubyte'), g.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(os.path.join(raw, f'{prefix}-labels-idx1-ubyte'), g.integers(0, 10, n, dtype=np.uint8))
EOF
  echo "MNIST not found: random images of MNIST's shape under $DATA"
fi
export FLOW_VAE_DATA=$DATA

echo "gpu_check$( ((DRY)) && echo ' --dry_run (CPU, tiny sizes: the numbers mean nothing)'), $(date -u +%FT%TZ)"
$PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader
echo "targets (one H100): latent-40 amortized planar-16 MLP step, batch 128 >= 3000 it/s; IW K=5000 over 10,000 test"
echo "images <= 10 s; eager without the host sync >= 1.5x eager with it ('sync gain')"

section tests 150 "$PY" -m pytest -q -rs tests -k 'cuda or sync_bn_steps'
section steps 210 "$PY" benchmarks/bench_train.py --steps_only --device "$DEVICE" --data_dir "$DATA" "${STEPS[@]}"
((${#COMPILED[@]})) && section compiled 150 "$PY" benchmarks/bench_train.py --steps_only --device "$DEVICE" \
  --data_dir "$DATA" --iters 13 --batch_size 16 --hidden_dim 16 --mm_size 128 "${COMPILED[@]}"

section amortized 60 "$PY" benchmarks/bench_amortized.py --device "$DEVICE" --steps_only --modes eager \
  "${AMORTIZED[@]}"

OUT=$TMP/run
section run 120 "$PY" dynamic_flow_vae.py --latent_dim 40 --layer 2 --flow planar --length 16 --iw_samples 0 \
  --eval_every 1000000 --sample_every 1000000 --ckpt_every 1000000 --device "$DEVICE" --data_dir "$DATA" \
  --out_dir "$OUT" "${RUN[@]}" ${RUN_FLAGS:-}
summary=$(ls "$OUT"/logs/*_summary.json 2>/dev/null | head -n 1)
if [[ -n $summary ]]; then
  report+=("$($PY - "$summary" "$ITERS_RUN" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
rate = s['its_per_s']
print(f"run: {sys.argv[2]} iterations in {s['train_seconds']:.1f} s of training = {rate:.0f} it/s on {s['device']}; "
      f"1,000 epochs (390,000 iterations) would take {390000 / rate / 3600:.2f} h of training "
      f"(evaluations not included); test ELBO {s['test_elbo']:.2f}")
EOF
)")
fi

echo "==== summary"
printf '%s\n' "${report[@]}"
echo "failed steps: $failed"
exit "$failed"

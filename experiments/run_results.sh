#!/usr/bin/env bash
# Rerun the README's results from scratch on real data and print their tables.
#
#   bash experiments/run_results.sh [SECTION ...]     (default: latent2 seed2 mnist40 fashion)
#
#   latent2  MNIST, --latent_dim 2, 10,000 iterations, flows of length 16, static and amortized; K = 1000
#   seed2    the same static runs with --objective seed (the original repo's objective); K = 1000
#   mnist40  MNIST, --latent_dim 40 --layer 2 --hidden_dim 400, length 16, static and amortized,
#            ITERS iterations with KL warm-up over the first fifth; K = 5000
#   fashion  Fashion-MNIST in bits/dim, the mnist40 MLP and the conv VAE (its defaults), none and
#            planar; K = 1000 (MLP) and K_CONV (conv)
#   mnist40_full  the full-budget protocol: MNIST with the last 10,000 training images for validation,
#            --latent_dim 40, MLP 2x400, flows of length 16, KL warm-up over 10,000 iterations, at most
#            1,000 epochs (390,000 iterations) with a cosine learning rate, the validation ELBO every 5 epochs,
#            stopping after 10 evaluations (50 epochs) without a better one; the best model is evaluated
#            with K = 5000. Runs: none, amortized planar and amortized NICE with seeds 0, 1, 2, then the
#            other amortized and static flows with seed 0, the static Sylvester flows and IAF, amortized IAF
#            and amortized sylvester-orthogonal with M = 16, then the amortized Sylvester flows at M = D
#            (H = 8), days each on one CPU core, meant for a GPU. A run folder that has a checkpoint is
#            resumed, not restarted.
#   latent2_full  the mnist40_full protocol with --latent_dim 2 and float32 networks: the plain VAE with seeds 0, 1, 2, then each
#            flow amortized and static with seed 0, then seeds 1 and 2 of the runs SEEDS_OF names (MODE:FLOW
#            ..., e.g. SEEDS_OF='amortized:nice static:iaf': the flows that close the most gap, which
#            `python experiments/results_table.py results/latent2_full --seeds_of 2` prints); K = 5000,
#            the exact log p(x), and each run's gap analyses (experiments/gap_spread.py, gap_split.py) in its folder
#   lr_schedule  the check behind the cosine schedule: the plain VAE of mnist40_full, 20,000 iterations,
#            constant and cosine learning rate, validation ELBO only
#   clip2d   the amortized planar run of latent2 with seeds 0, 1, 2, each without and with --clip_grad 500;
#            the test ELBO and exact log p(x), no IW
#
# Environment [default]: OUT [runs] holds OUT/SECTION/RUN/{logs,samples,plots,checkpoints,...}; at the end
# experiments/collect_results.py copies each finished run's log, summary, gap analyses and posterior figure
# to results/SECTION/RUN/;
# ITERS [5000, as in the README]; SEEDS_OF [none] (latent2_full); FLOWS [none planar radial householder nice] (fashion: none planar);
# K_CONV [250]; RUNS [all] a regular expression: only the runs whose name it matches are launched;
# JOBS [number of CPUs] runs at once, one CPU thread each;
# TRAIN_DEVICE [auto] trains the MLP runs, CONV_DEVICE [auto] the conv runs, EVAL_DEVICE [auto]
# evaluates. Each run trains with --iw_samples 0; its checkpoint is then evaluated with --eval_only
# and K samples, so a GPU can evaluate while the CPUs train. A run stopped by SIGTERM is evaluated
# at the iteration it reached, which the table shows; a finished run already evaluated with K is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-runs}
ITERS=${ITERS:-5000}
K_CONV=${K_CONV:-250}
JOBS=${JOBS:-$(nproc)}
TRAIN_DEVICE=${TRAIN_DEVICE:-auto}
CONV_DEVICE=${CONV_DEVICE:-auto}
EVAL_DEVICE=${EVAL_DEVICE:-auto}
sections=("$@")
((${#sections[@]})) || sections=(latent2 seed2 mnist40 fashion)
for run in ${SEEDS_OF:-}; do
  [[ $run =~ ^(static|amortized):[a-z-]+$ ]] || { echo "SEEDS_OF: '$run' is not MODE:FLOW, e.g. amortized:nice" >&2; exit 2; }
done

last_checkpoint() {   # the run's checkpoint (not its best model's), if it has one
  [[ -d $1/checkpoints ]] && find "$1/checkpoints" -name '*.pt' ! -name '*_best.pt' | head -n 1 || true
}

has_iw() {   # whether the run's summary holds its IW estimate with K samples (a finished run resumed keeps it)
  local summary check='import json, sys; sys.exit(json.load(open(sys.argv[1])).get("iw_samples") != int(sys.argv[2]))'
  summary=$(find "$1/logs" -name '*_summary.json' 2> /dev/null | head -n 1)
  [[ -n $summary ]] && python -c "$check" "$summary" "$2"
}

# one run: SECTION NAME SCRIPT DEVICE K FLAG... -> OUT/SECTION/NAME; a run that has a checkpoint is resumed
run() {
  local section=$1 name=$2 script=$3 device=$4 k=$5
  shift 5
  local dir="$OUT/$section/$name" code=0 ckpt
  mkdir -p "$dir"
  ckpt=$(last_checkpoint "$dir")
  if [[ -n $ckpt ]]; then set -- --resume "$ckpt"; fi
  OMP_NUM_THREADS=1 nice python "$script" "$@" --device "$device" --iw_samples 0 --out_dir "$dir" \
    >> "$dir/train.out" 2>&1 || code=$?
  if [[ $code -ne 0 && $code -ne 143 ]]; then   # 143: stopped by SIGTERM, checkpoint saved
    echo "$section/$name: training failed (exit $code): $(tail -n 1 "$dir/train.out")" >&2
    return 0
  fi
  ((k)) || { echo "$section/$name: done" >&2; return 0; }
  if has_iw "$dir" "$k"; then
    echo "$section/$name: evaluated before" >&2
  elif ! OMP_NUM_THREADS=1 nice python "$script" --resume "$(last_checkpoint "$dir")" --eval_only \
      --device "$EVAL_DEVICE" --iw_samples "$k" > "$dir/eval.out" 2>&1; then
    echo "$section/$name: evaluation failed: $(tail -n 1 "$dir/eval.out")" >&2
    return 0
  fi
  [[ $section != latent2_full ]] || gap_analyses "$OUT/$section" "$name"
  echo "$section/$name: done" >&2
}

# the gap analyses of a finished 2-D run's best model, into its folder: gap_spread.txt, gap_split.txt and
# gap_split.json (800 Adam steps per image), each skipped when it is there; their progress goes to
# gap_analyses.out. They run in the section's folder, so that their tables name RUN/checkpoints/<prefix>_best.pt.
gap_analyses() {   # SECTION_DIR RUN
  local best
  best=$(find "$1/$2/checkpoints" -name '*_best.pt' 2> /dev/null | head -n 1)
  [[ -n $best ]] || { echo "$(basename "$1")/$2: no best checkpoint, no gap analyses" >&2; return 0; }
  best=$2/checkpoints/$(basename "$best")
  (cd "$1" && gap_analysis "$2" "$best" gap_spread && gap_analysis "$2" "$best" gap_split --steps 800 \
    --json "$2/gap_split.json") || echo "$(basename "$1")/$2: a gap analysis failed (see $1/$2/gap_analyses.out)" >&2
}

gap_analysis() {   # RUN CHECKPOINT NAME FLAG...: experiments/NAME.py on CHECKPOINT, its table into RUN/NAME.txt
  local run=$1 checkpoint=$2 name=$3
  shift 3
  [[ -s $run/$name.txt ]] && return 0
  OMP_NUM_THREADS=1 nice python "$ROOT/experiments/$name.py" "$checkpoint" "$@" > "$run/$name.txt.part" \
    2>> "$run/gap_analyses.out" && mv "$run/$name.txt.part" "$run/$name.txt"
}

running=0
launch() {   # run in the background, at most JOBS at once
  [[ $2 =~ ${RUNS:-.} ]] || return 0
  run "$@" &
  running=$((running + 1))
  if ((running >= JOBS)); then
    wait -n || true
    running=$((running - 1))
  fi
}

read -r -a flows <<< "${FLOWS:-none planar radial householder nice}"
mlp40=(--latent_dim 40 --layer 2 --hidden_dim 400 --length 16 --max_iter "$ITERS" --warmup $((ITERS / 5)))
# the full-budget protocol of mnist40_full and latent2_full, but for the latent dimension and the precision:
# bfloat16 networks in 40-D; float32 in 2-D, whose step bfloat16 makes 1.4x faster on a CPU with AVX512-BF16
# and 3.5x slower on one without (docs/speed.md), so that the section runs at one precision on either
protocol=(--layer 2 --hidden_dim 400 --length 16 --warmup 10000 --val_size 10000 --max_iter 390000
          --lr_schedule cosine --eval_every 1950 --patience 10 --log_every 390 --ckpt_every 1950
          --sample_every 39000 --compile 1)
full_run() {   # SECTION MODE FLOW SEED [NAME_SUFFIX FLAG...]: a run of the protocol, mlp_MODE_FLOW[SUFFIX]_seedSEED; K = 5000
  local section=$1 mode=$2 flow=$3 seed=$4 suffix=${5:-} dim=40 precision=bf16 script=static_flow_vae.py
  shift $(($# < 5 ? $# : 5))
  [[ $section == latent2_full ]] && dim=2 precision=fp32
  [[ $mode == amortized ]] && script=dynamic_flow_vae.py
  launch "$section" "mlp_${mode}_${flow}${suffix}_seed$seed" "$script" "$TRAIN_DEVICE" 5000 --latent_dim "$dim" \
    "${protocol[@]}" --precision "$precision" --flow "$flow" --seed "$seed" "$@"
}
for section in "${sections[@]}"; do
  case $section in
    latent2)
      for flow in "${flows[@]}"; do
        launch latent2 "mlp_static_$flow" static_flow_vae.py "$TRAIN_DEVICE" 1000 \
          --latent_dim 2 --max_iter 10000 --length 16 --flow "$flow"
        [[ $flow == none ]] && continue   # with no flow, dynamic_flow_vae.py is the same model
        launch latent2 "mlp_amortized_$flow" dynamic_flow_vae.py "$TRAIN_DEVICE" 1000 \
          --latent_dim 2 --max_iter 10000 --length 16 --flow "$flow"
      done ;;
    seed2)
      for flow in "${flows[@]}"; do
        launch seed2 "mlp_static_$flow" static_flow_vae.py "$TRAIN_DEVICE" 1000 \
          --latent_dim 2 --max_iter 10000 --length 16 --flow "$flow" --objective seed
      done ;;
    mnist40)
      for flow in "${flows[@]}"; do
        launch mnist40 "mlp_static_$flow" static_flow_vae.py "$TRAIN_DEVICE" 5000 "${mlp40[@]}" --flow "$flow"
        [[ $flow == none ]] && continue
        launch mnist40 "mlp_amortized_$flow" dynamic_flow_vae.py "$TRAIN_DEVICE" 5000 "${mlp40[@]}" --flow "$flow"
      done ;;
    fashion)
      for flow in "${flows[@]}"; do
        [[ $flow == none || $flow == planar ]] || continue
        launch fashion "conv_static_$flow" static_flow_conv_vae.py "$CONV_DEVICE" "$K_CONV" --dataset fashion-mnist \
          --length 16 --max_iter "$ITERS" --warmup $((ITERS / 5)) --flow "$flow"
        launch fashion "mlp_static_$flow" static_flow_vae.py "$TRAIN_DEVICE" 1000 --dataset fashion-mnist \
          "${mlp40[@]}" --flow "$flow"
      done ;;
    mnist40_full)
      for seed in 0 1 2; do
        full_run mnist40_full static none "$seed"
        full_run mnist40_full amortized planar "$seed"
        full_run mnist40_full amortized nice "$seed"
      done
      for flow in radial householder; do full_run mnist40_full amortized "$flow" 0; done
      for flow in planar radial householder nice sylvester-orthogonal sylvester-householder sylvester-triangular iaf; do
        full_run mnist40_full static "$flow" 0
      done
      full_run mnist40_full amortized iaf 0
      full_run mnist40_full amortized sylvester-orthogonal 0 -m16 --sylvester_m 16
      for flow in sylvester-orthogonal sylvester-householder sylvester-triangular; do   # M = D: for a GPU
        full_run mnist40_full amortized "$flow" 0
      done ;;
    latent2_full)
      for seed in 0 1 2; do full_run latent2_full static none "$seed"; done
      for flow in planar radial householder nice sylvester-orthogonal sylvester-householder sylvester-triangular iaf; do
        full_run latent2_full amortized "$flow" 0
        full_run latent2_full static "$flow" 0
      done
      for run in ${SEEDS_OF:-}; do
        for seed in 1 2; do full_run latent2_full "${run%%:*}" "${run#*:}" "$seed"; done
      done ;;
    lr_schedule)
      for schedule in none cosine; do
        launch lr_schedule "mlp_static_none_lr-${schedule/none/constant}" static_flow_vae.py "$TRAIN_DEVICE" 0 \
          --latent_dim 40 --length 16 --max_iter 20000 --warmup 2000 --val_size 10000 --eval_every 1950 \
          --log_every 390 --sample_every 20000 --compile 1 --precision bf16 --lr_schedule "$schedule"
      done ;;
    clip2d)
      for seed in 0 1 2; do
        planar2d=(--latent_dim 2 --max_iter 10000 --length 16 --flow planar --seed "$seed")
        launch clip2d "mlp_amortized_planar_seed$seed" dynamic_flow_vae.py "$TRAIN_DEVICE" 0 "${planar2d[@]}"
        launch clip2d "mlp_amortized_planar-clip500_seed$seed" dynamic_flow_vae.py "$TRAIN_DEVICE" 0 "${planar2d[@]}" \
          --clip_grad 500
      done ;;
    *) echo "unknown section $section: choose from latent2 seed2 mnist40 fashion mnist40_full latent2_full lr_schedule clip2d" >&2
       exit 2 ;;
  esac
done
wait
for section in "${sections[@]}"; do
  python experiments/collect_results.py "$OUT/$section" "results/$section"
  python experiments/results_table.py "results/$section"
done

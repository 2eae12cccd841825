#!/usr/bin/env bash
# The GPU measurements of the README's performance table, in one go (one device lease):
# the attention/bf16 numerics checks, then the training step at the sizes, each run in
# its own process under a time limit so one failure leaves the others standing.
#
#   bash benchmarks/gpu_suite.sh [LOG_DIR]     (run from the repository root)
#   ROWS="checks base128_cudnn" bash benchmarks/gpu_suite.sh    (only the rows named)
#
# The limits add up to ~33 minutes, more than a 15-minute lease: name the rows wanted in ROWS
# and give the call a limit. Compile + first step: BERT-Large 56-80 s, BERT-Base 27-51 s (H100
# and H200); the lower figures are later rows that shared an autotune cache with earlier ones
# (XLA_FLAGS=--xla_gpu_per_fusion_autotune_cache_dir=DIR).
# On an H100 one 520 s call ran the first four rows below and most of the fifth. On a fresh H200
# machine (2026-11-28) BERT-Large did not get through compile and its first step within 110-130 s,
# with or without the tree's changes since, so the Large rows now get 240-300 s; the Base rows
# took 25-37 s. Batch 512 unaccumulated did not finish within 100 s either (new shapes, autotuned
# afresh); two accumulated micro-batches of 256 compiled in 26 s.
#
# Rows: BERT-Large seq 512 and BERT-Base seq 128 in bf16, with fused cuDNN attention (no dropout
# on the attention probabilities: jax.nn.dot_product_attention has none), with model.fused_qkv (the
# default) and without, then cuBLASLt epilogues, BERT-Large at batch 64, and the faithful unfused
# attention-dropout path (BERT-Base also with train.prng_impl=rbg's cheaper dropout bits). Each
# run's last line is `tokens_per_sec=<N> mfu=<F>`. The first BERT-Large and BERT-Base rows also
# write a profile and print its kernels by class and by name; BERT-Large also writes its
# optimized HLO (large512_cudnn.hlo), which names the profile's fusions; BERT-Base prints its
# forward/backward/update split.
#
# An A/B against an earlier tree in the same lease (one machine, one autotune cache): unpack that
# tree into a folder git ignores, e.g. `git archive REV bert_jax benchmarks | tar -x -C .ab/REV`
# (with `/.ab/` in .git/info/exclude), name `.ab` in the device call's carry, and run the suite
# (or benchmarks/train_step.py) once from the repository root and once from inside .ab/REV: the
# rows import the package from the folder they run in. Waiting for such an A/B: the branch
# single-pass-guard, whose non-finite guard chooses old-or-new on the gradient's finiteness
# alone (fused into the update, no second pass over params and moments; its
# benchmarks/update_phase.py times the two), and the LayerNorm derivative rule (1f7990c^ before).
#
# Needs jax with a GPU backend, flax, optax, absl-py and ml_collections; nothing else of the package
# (no TensorFlow: the step runs on synthetic batches). Where ml_collections is missing and pip
# cannot reach an index, bring its wheel (pure Python) and install it to a folder on PYTHONPATH:
#   pip download --no-deps --only-binary=:all: -d .whl ml_collections   (where pip works)
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -u
LOG_DIR=${1:-${TMPDIR:-/tmp}/bert_jax_gpu_suite}
mkdir -p "$LOG_DIR"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

run() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  case " ${ROWS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name"
  timeout "$limit" "$@" >"$LOG_DIR/$name.log" 2>&1
  local rc=$?
  grep -E "^(device=|size=|tokens_per_sec=|checks_passed=|.*rel_err=)" "$LOG_DIR/$name.log"
  [ $rc -eq 0 ] || { echo "$name: exit $rc"; grep -E "Error|error:" "$LOG_DIR/$name.log" | tail -3; }
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
"$PYTHON" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
run checks 90 "$PYTHON" benchmarks/attention_checks.py
step="$PYTHON benchmarks/train_step.py --dtype=bfloat16 --steps=20"
profile_rows() {  # name: its device-time summary, when the row wrote a profile
  [ -d "$LOG_DIR/profile_$1" ] || return 0
  grep "^breakdown_ms" "$LOG_DIR/$1.log"
  "$PYTHON" benchmarks/profile_summary.py "$LOG_DIR/profile_$1" --top=15
}
large="$step --size=large --seq_len=512 --attention=cudnn --attention_dropout=0"
base="$step --size=base --seq_len=128 --batch=256"
run large512_cudnn 300 $large --batch=32 --profile_dir="$LOG_DIR/profile_large512_cudnn" \
  --hlo_file="$LOG_DIR/large512_cudnn.hlo"
profile_rows large512_cudnn
run large512_cudnn_separate_qkv 240 $large --batch=32 --nofused_qkv
run base128_cudnn 150 $base --attention=cudnn --attention_dropout=0 --breakdown \
  --profile_dir="$LOG_DIR/profile_base128_cudnn"
profile_rows base128_cudnn
run base128_cudnn_separate_qkv 120 $base --attention=cudnn --attention_dropout=0 --nofused_qkv
# Batch 512 as two accumulated micro-batches of 256: same activation shapes (the autotune cache
# of the row above serves it), the optimizer update's cost spread over twice the tokens.
run base128_cudnn_accum2 120 $step --size=base --seq_len=128 --batch=512 --grad_accum_steps=2 \
  --attention=cudnn --attention_dropout=0
# float16 compute with its dynamic loss scale (what V100 and T4 users train with): the same
# tensor-core rate as bf16 on an H100/H200, plus the scaling and unscaling passes.
run base128_cudnn_float16 150 $base --dtype=float16 --attention=cudnn --attention_dropout=0
# cuBLASLt matmuls, whose epilogues can fuse the bias add (and GELU) that otherwise run as
# separate memory-bound kernels (28% of the BERT-Base step in its profile): no gain on an H100.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_cublaslt=true" \
  run base128_cudnn_cublaslt 120 $base --attention=cudnn --attention_dropout=0
# Batch 64 compiled on an H100 but did not finish its timed steps within 150 s.
run large512_cudnn_b64 300 $large --batch=64
run base128_xla_dropout 120 $base
run base128_xla_dropout_rbg 120 $base --prng_impl=rbg
run large512_xla_dropout 300 $step --size=large --seq_len=512 --batch=32

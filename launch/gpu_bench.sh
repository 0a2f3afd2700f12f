#!/usr/bin/env bash
# launch/gpu_bench.sh: the train-step benchmark on one CUDA GPU (issue 8's GPU figures).
#
# Runs `python -m semclip_jax.bench` for ViT-B/32 and ViT-B/16 at batch 256 and 512 in bfloat16
# compute (float32 parameters and optimizer state), each with the image tower frozen (the paper's
# setting) and with both towers trained, after measuring the GPU's dense bfloat16 matmul peak in
# the same process. Then, per preset and batch, the frozen-image training loop end to end (JPEGs
# from disk through the input pipeline into the step) without and with cached image embeddings,
# and the input pipeline's records/s on this host. Every measurement is one JSON line appended to
# $OUT/gpu_bench.jsonl; the script ends with a table of MFU per setting and the loops' samples/s.
#
# Usage:  bash launch/gpu_bench.sh            (from the repository root)
#   PYTHON=/path/to/python   use this interpreter as is (it must already import jax with CUDA; on a
#                            pre-provisioned host without network, put the missing wheels on
#                            PYTHONPATH first, as ../shared/tools/device_kit.sh prints);
#                            otherwise a venv $VENV is made with `pip install -e . jax[$JAX_CUDA]`
#   CACHE_FILES=1024 CACHE_WORKERS=$(nproc)   JPEGs and grain workers of the cached/uncached loop
#   PRESETS="B/32 B/16" BATCHES="256 512" TOWERS=all STEPS=10 WARMUP=2 OUT=bench_out
#   ALLOW_CPU=1              rehearse the whole script on a CPU (e.g. PRESETS=tiny BATCHES=8)
set -euo pipefail
cd "$(dirname "$0")/.."

JAX_VERSION=${JAX_VERSION:-0.10.2}
JAX_CUDA=${JAX_CUDA:-cuda12}
VENV=${VENV:-.venv-gpu}
PRESETS=${PRESETS:-"B/32 B/16"}
BATCHES=${BATCHES:-"256 512"}
TOWERS=${TOWERS:-all}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
OUT=${OUT:-bench_out}
CACHE_FILES=${CACHE_FILES:-1024}
CACHE_WORKERS=${CACHE_WORKERS:-$(nproc)}
mkdir -p "$OUT"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3.11 -m venv "$VENV"
    "$VENV/bin/pip" install -q -e . "jax[$JAX_CUDA]==$JAX_VERSION"
  fi
  PYTHON="$VENV/bin/python"
fi
ALLOW_CPU=${ALLOW_CPU:-0} "$PYTHON" -c "import jax, os, sys; d = jax.devices(); \
print('devices:', d); sys.exit(0 if d[0].platform == 'gpu' or os.environ['ALLOW_CPU'] == '1' \
else 'no GPU visible to jax: ' + str(d))"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || true

for preset in $PRESETS; do
  for batch in $BATCHES; do
    echo "+ $preset batch $batch bfloat16 towers=$TOWERS"
    # One process per setting: a failed (e.g. out-of-memory) setting does not stop the others.
    "$PYTHON" -m semclip_jax.bench --what=step --preset="$preset" --batch_size="$batch" \
      --dtype=bfloat16 --towers="$TOWERS" --warmup="$WARMUP" --steps="$STEPS" \
      --json_out="$OUT/gpu_bench.jsonl" || echo "! $preset batch $batch failed"
  done
done
for preset in $PRESETS; do
  for batch in $BATCHES; do
    echo "+ $preset batch $batch bfloat16 image tower frozen: uncached vs cached embeddings"
    "$PYTHON" -m semclip_jax.bench --what=cache --preset="$preset" --batch_size="$batch" \
      --dtype=bfloat16 --warmup="$WARMUP" --steps="$STEPS" --cache_files="$CACHE_FILES" \
      --cache_workers="$CACHE_WORKERS" --json_out="$OUT/gpu_bench.jsonl" \
      || echo "! cache $preset batch $batch failed"
  done
done
"$PYTHON" -m semclip_jax.bench --what=input --preset=B/16 --workers="$(nproc)" \
  --json_out="$OUT/gpu_bench.jsonl" || echo "! input benchmark failed"

"$PYTHON" - "$OUT/gpu_bench.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"\n{'preset':<6} {'batch':>5} {'towers':<6} {'L':>3} {'s/step':>8} {'samples/s':>10} "
      f"{'TFLOP/s':>8} {'peak':>7} {'MFU':>6} {'mem GiB':>8}")
for r in rows:
  if r["what"] == "step":
    print(f"{r['preset']:<6} {r['batch_size']:>5} {r['towers']:<6} {r['text_length']:>3} "
          f"{r['step_s_median']:>8.4f} {r['samples_per_s']:>10.1f} "
          f"{r['achieved_flops_per_s'] / 1e12:>8.1f} {r['peak_flops_per_s'] / 1e12:>7.1f} "
          + (f"{100 * r['mfu']:>5.1f}%" if r.get("mfu") is not None else "  n/a ")
          + f" {r['peak_memory_bytes'] / 2**30:>8.1f}"
          + ("" if r.get("mfu") is not None else f"  (MFU invalid: {r.get('mfu_invalid')})"))
  elif r["what"] == "cache":
    print(f"loop   {r['preset']:<6} {r['batch_size']:>5} text   "
          f"{'cached' if r['cached'] else 'uncached'}: {r['samples_per_s']:.1f} samples/s end to end"
          + (f", {r['speedup']:.2f}x uncached, cache built in {r['cache_build_s']:.1f} s"
             if r["cached"] else ""))
  elif r["what"] == "input":
    print(f"input {r['dataset']} workers={r['workers']}"
          + ("" if r.get("jpeg_draft", True) else " (no draft)")
          + f": {r['records_per_s']:.0f} records/s")
EOF

#!/usr/bin/env bash
# One command that proves the training path on an accelerator, and writes a Markdown report.
#
#   benchmarks/accelerator_check.sh [--bulk DIR] [--report FILE] [--steps N] [--peak-tflops X]
#   benchmarks/accelerator_check.sh --cpu-smoke      # the same steps at tiny sizes on CPU (run by the test suite)
#
# 1. the device and its driver (nvidia-smi, TensorFlow's device list);
# 2. benchmarks/model_bench.py: `small` and `medium` in bf16 with XLA, MFU against the measured bf16
#    matmul and, with --peak-tflops, the datasheet peak (H200/H100 SXM: 989 dense bf16 TFLOP/s);
# 3. real shards made on the spot from aozora-bulk (--bulk; the mirror's 48 works with --cpu-smoke), then
#    `small` trained for --steps steps, SIGKILLed after its first checkpoint and resumed to the end
#    (the run must end at --steps with one unbroken metrics series);
# 4. bits per character on the validation split (with the PPMd baselines) and the Hugging Face export,
#    whose logits the export itself checks against transformers.
#
# The device machine gets only the repository: copy a part of ../shared/aozora-bulk into an ignored
# folder (e.g. .bulk/, listed in .git/info/exclude), carry it, and pass --bulk .bulk. About 8 minutes
# on one H200 with the defaults. The report goes to --report (default
# benchmarks/reports/accelerator-check.md); the README's Speed section quotes it.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
GPT2JA=("$PY" -m gpt2ja)

SMOKE=0
BULK="$REPO/../shared/aozora-bulk"
REPORT="$REPO/benchmarks/reports/accelerator-check.md"
STEPS=300
PEAK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1; shift ;;
    --bulk) BULK="$2"; shift 2 ;;
    --report) REPORT="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --peak-tflops) PEAK="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see $0 --help)" >&2; exit 2 ;;
  esac
done

if [ "$SMOKE" = 1 ]; then
  BULK="$REPO/examples/aozora-mirror"
  PRESET=tiny BENCH_PRESETS=tiny PRECISION=off XLA="" SEQ=128 VOCAB=3000 MICRO=4 BATCH_TOKENS=1024
  STEPS=40 CKPT=4 MATMUL=256 SAMPLE=20000 PRIME=20000 BENCH_STEPS=2
else
  PRESET=small BENCH_PRESETS=small,medium PRECISION=bf16 XLA="--xla" SEQ=1024 VOCAB=8000 MICRO=16
  BATCH_TOKENS=$((16 * 1024)) CKPT=50 MATMUL=8192 SAMPLE=200000 PRIME=4000000 BENCH_STEPS=5
fi
[ -d "$BULK" ] || { echo "error: no corpus at $BULK; give --bulk DIR (Aozora zips)" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpt2ja-accelerator-check-XXXXXX")"
TRAINER=""
cleanup() {
  [ -n "$TRAINER" ] && kill -9 "$TRAINER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" GPT2JA_PROGRESS="${GPT2JA_PROGRESS:-off}" \
  HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error
mkdir -p "$(dirname "$REPORT")"
LOG="$WORK/report.md"
say() { printf '%s\n' "$*" | tee -a "$LOG"; }
block() { say '```'; "$@" 2>&1 | tee -a "$LOG"; say '```'; }

say "# Accelerator check ($([ "$SMOKE" = 1 ] && echo "CPU smoke run, tiny sizes" || echo "full"))"
say ""
say "$(date -u +%Y-%m-%dT%H:%M:%SZ) · $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no git") · $(uname -srm)"
say ""
say "## 1. Device"
if command -v nvidia-smi >/dev/null 2>&1; then
  block nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv
else
  say "nvidia-smi: not found (no NVIDIA GPU here)"
fi
block "$PY" -c 'import tensorflow as tf; print("TensorFlow", tf.__version__); print(tf.config.list_physical_devices())'

say ""
say "## 2. Training speed and MFU (model_bench.py)"
say ""
say "Shards for the benchmark and the run below: $BULK → crawl files → clean → sentencepiece $VOCAB → seq_len $SEQ."
ROOT="$WORK/root"
"${GPT2JA[@]}" crawl files "$BULK" --root "$ROOT" --crawl-id check > "$WORK/crawl.log" 2>&1
"${GPT2JA[@]}" clean --in "$ROOT/raw/files/check" --out "$ROOT/clean/check" > "$WORK/clean.log" 2>&1
"${GPT2JA[@]}" tokenizer train --corpus "$ROOT/clean/check" --vocab-size "$VOCAB" --sample-sentences "$SAMPLE" \
  --out "$ROOT/tokenizers/sp" > "$WORK/tokenizer.log" 2>&1
"${GPT2JA[@]}" shards --corpus "$ROOT/clean/check" --tokenizer "$ROOT/tokenizers/sp" --seq-len "$SEQ" \
  --out "$ROOT/shards" > "$WORK/shards.log" 2>&1
BENCH=("$PY" "$REPO/benchmarks/model_bench.py" --data "$ROOT/shards" --presets "$BENCH_PRESETS" --steps "$BENCH_STEPS"
       --micro-batch "$MICRO" --mixed-precision "$PRECISION" --matmul-size "$MATMUL" --generation-presets "$PRESET")
[ -n "$XLA" ] && BENCH+=("$XLA")
[ -n "$PEAK" ] && BENCH+=(--peak-tflops "$PEAK")
block "${BENCH[@]}"

say ""
say "## 3. Training $PRESET for $STEPS steps, killed after its first checkpoint, resumed"
RUN="$ROOT/runs/check"
TRAIN=("${GPT2JA[@]}" train --data "$ROOT/shards" --run "$RUN" --preset "$PRESET" --steps "$STEPS"
       --batch-tokens "$BATCH_TOKENS" --micro-batch "$MICRO" --warmup-steps $((STEPS / 10 + 1))
       --mixed-precision "$PRECISION" --set "checkpoint_every=$CKPT" --set eval_every="$CKPT" --set eval_batches=2)
[ -n "$XLA" ] && TRAIN+=("$XLA")
"${TRAIN[@]}" > "$WORK/train-1.log" 2>&1 &
TRAINER=$!
until ls "$RUN/checkpoints/"ckpt-*.index >/dev/null 2>&1; do
  if ! kill -0 "$TRAINER" 2>/dev/null; then
    echo "error: training ended before its first checkpoint:" >&2; tail -20 "$WORK/train-1.log" >&2; exit 1
  fi
  sleep 0.5
done
kill -9 "$TRAINER" 2>/dev/null || true  # (a run that already ended: the resume finds it complete)
wait "$TRAINER" 2>/dev/null || true; TRAINER=""
KILLED_AT=$(ls "$RUN/checkpoints/" | sed -n 's/^ckpt-\([0-9]*\)\.index$/\1/p' | sort -n | tail -1)
say "SIGKILL after checkpoint $KILLED_AT; resuming with the same command."
block "${TRAIN[@]}"
block "$PY" - "$RUN" "$STEPS" <<'EOF'
import json, sys
from pathlib import Path
run, steps = Path(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
logged = [r["step"] for r in rows if "loss" in r]
assert logged and logged[-1] == steps, f"the run ended at step {logged[-1] if logged else None}, not {steps}"
assert logged == sorted(set(logged)), "the metrics series repeats or goes back after the resume"
losses = [r["loss"] for r in rows if "loss" in r]
print(f"resumed run: logged steps {logged[0]}..{logged[-1]} without a gap or repeat, loss {losses[0]:.3f} → {losses[-1]:.3f}")
EOF

say ""
say "## 4. Evaluation and the Hugging Face export"
block "${GPT2JA[@]}" eval --run "$RUN" --text "$ROOT/clean/check/validation" --prime-chars "$PRIME"
block "${GPT2JA[@]}" export hf --run "$RUN" --out "$RUN/export/hf"

say ""
say "All four steps passed."
cp "$LOG" "$REPORT"
echo "report: $REPORT"

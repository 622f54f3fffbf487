#!/usr/bin/env bash
# One command that proves gpt2ja's JAX path on a GPU machine with PyTorch + JAX + CUDA and no TensorFlow,
# appending a Markdown report as it goes (a run cut off still leaves what it measured).
#
#   benchmarks/accelerator_check.sh --prepare DIR [--bulk DIR] [--python-version 3.12]   # here, with TensorFlow
#   benchmarks/accelerator_check.sh --from DIR [--report FILE]                          # there, on the GPU
#   benchmarks/accelerator_check.sh --cpu-smoke [--report FILE]     # both, at tiny sizes, here, TensorFlow blocked
#
# --prepare (here; the shard writer needs TensorFlow, the device has none and reaches no package index) puts into
# DIR (an ignored folder of the repo, e.g. .device/) what the device lacks: the wheels of
# benchmarks/device_env.py's CARRY (Keras, KerasHub, pydantic, typer, pyppmd, ...: about 8 MB), and
# benchmarks/device_data.py's data: a few MB of real shards of aozora-bulk (every 10th work of ten authors,
# sentencepiece 8k, seq_len 1024), their tokenizer and clean corpus, and 100,000 characters of 梶井基次郎, whom
# training never sees. It prints the size: what travels (the repo's files + DIR) must stay under 64 MiB.
#
# On the device, in the repo root (DIR carried; the wheels go to /tmp/gpt2ja-site, the report wherever --report
# says, e.g. $OUT/accelerator-check.md), about 6 minutes on one H100 (an estimate: not yet run there):
#   1. the device (nvidia-smi, jax.devices(), torch.cuda) and the bf16 matmul ceiling in JAX and in PyTorch;
#   2. `small` at GPT-2's shape (vocabulary 50,304, seq_len 1024, bf16, dropout 0) through gpt2ja's own JAX train
#      step (benchmarks/model_bench.py --backend jax): tokens/s, MFU against the datasheet peak (looked up by
#      the device's name, source printed) and against the measured ceiling; FLOPs per token 6·N + 12·L·H·T (PaLM);
#   3. the same shape in PyTorch as its users write it (benchmarks/torch_gpt2.py: torch.compile, bf16 autocast,
#      SDPA flash attention, fused AdamW, tied embedding), in the same call;
#   4. `gpt2ja train --backend jax` on the real shards, SIGKILLed after its first checkpoint and resumed, against
#      an uninterrupted run of the same command (weights: bitwise equal on CPU; on a GPU the max abs difference);
#   5. `gpt2ja eval` of that run on the held-out author with the PPMd baselines, and `gpt2ja export hf` with its
#      logit check against transformers.
#
# --cpu-smoke runs --prepare at tiny sizes (the bundled mirror, 新美南吉 held out) with this venv's TensorFlow,
# then every step above at tiny sizes on JAX's CPU build in a stand-in of the device (device_env.py simulate:
# only the device's packages, the carried wheels installed with pip --target, and a tensorflow/ on the path whose
# import raises ImportError). tests/test_accelerator_check.py runs it.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi

MODE=device
DIR=""
BULK="$REPO/../shared/aozora-bulk"
PYVER=3.12
REPORT=""
SIZES=full
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare; DIR="$2"; shift 2 ;;
    --from) DIR="$2"; shift 2 ;;
    --cpu-smoke) MODE=smoke; shift ;;
    --bulk) BULK="$2"; shift 2 ;;
    --python-version) PYVER="$2"; shift 2 ;;
    --report) REPORT="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;  # full | tiny (set by --cpu-smoke)
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see $0 --help)" >&2; exit 2 ;;
  esac
done
export GPT2JA_PROGRESS="${GPT2JA_PROGRESS:-off}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" \
  HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1

mib() { "$PY" -c "import sys; print(f'{int(sys.argv[1]) / 2**20:.1f} MiB')" "$1"; }

# ----------------------------------------------------------------- --prepare DIR (here, with TensorFlow)
prepare() {  # prepare DIR tiny|full
  local dir="$1" sizes="$2"
  mkdir -p "$dir" || return 1
  echo "wheels for CPython $PYVER → $dir/wheels"
  rm -rf "$dir/wheels"
  "$PY" "$REPO/benchmarks/device_env.py" wheels "$dir/wheels" --python-version "$PYVER" || return 1
  echo "data → $dir/data (the project's stages: crawl files, clean, tokenizer, shards; held-out author apart)"
  if [ "$sizes" = tiny ]; then
    "$PY" "$REPO/benchmarks/device_data.py" "$dir/data" --bulk "$REPO/examples/aozora-mirror" --holdout 000121 \
      --every 1 --vocab 3000 --seq-len 128 --sample-sentences 20000 --heldout-chars 20000 \
      --validation-fraction 0.25 >/dev/null || return 1
  else
    "$PY" "$REPO/benchmarks/device_data.py" "$dir/data" --bulk "$BULK" --holdout 000074 --every 10 --vocab 8000 \
      --seq-len 1024 --sample-sentences 200000 --heldout-chars 100000 >/dev/null || return 1
  fi
  local own tracked
  own=$(du -sb "$dir" | cut -f1)
  tracked=$(git -C "$REPO" ls-files -z | (cd "$REPO" && xargs -0 du -cb 2>/dev/null) | tail -1 | cut -f1)
  echo "prepared $dir: $(mib "$own") ($(du -sb "$dir/wheels" | cut -f1 | xargs -I{} "$PY" -c \
    "print(f'{int({}) / 2**20:.1f} MiB')") of wheels); with the repo's tracked files ($(mib "$tracked")): \
$(mib $((own + tracked))) of the 64 MiB a device command carries"
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print('data:', json.dumps(d, ensure_ascii=False))" \
    "$dir/data/PREPARED.json"
  if [ $((own + tracked)) -gt $((60 * 1024 * 1024)) ]; then
    echo "error: $dir and the repo come to more than 60 MiB; take fewer works (device_data.py --every)" >&2
    return 1
  fi
}

if [ "$MODE" = prepare ]; then
  prepare "$DIR" "$SIZES"
  exit $?
fi

# ----------------------------------------------------------------- --cpu-smoke: prepare + a device stand-in, then the check
if [ "$MODE" = smoke ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpt2ja-accelerator-smoke-XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  prepare "$WORK/device" tiny > "$WORK/prepare.log" 2>&1 || { cat "$WORK/prepare.log" >&2; exit 1; }
  "$PY" "$REPO/benchmarks/device_env.py" simulate "$WORK/fake" --no-carry > /dev/null || exit 1
  REPORT="${REPORT:-$REPO/benchmarks/reports/accelerator-check-cpu-smoke.md}"
  PYTHON="$WORK/fake/bin/python" bash "$0" --from "$WORK/device" --report "$REPORT" --sizes tiny \
    --python-version "$PYVER"
  exit $?
fi

# ----------------------------------------------------------------- the check (on the device, or the stand-in)
[ -n "$DIR" ] || { echo "error: give --from DIR (made by --prepare DIR here)" >&2; exit 2; }
DIR="$(cd "$DIR" && pwd)"
REPORT="${REPORT:-$REPO/benchmarks/reports/accelerator-check.md}"
mkdir -p "$(dirname "$REPORT")"
REPORT="$(cd "$(dirname "$REPORT")" && pwd)/$(basename "$REPORT")"
cd "$REPO" || exit 1  # python -m gpt2ja and the benchmarks' imports: the repo root, wherever the check is started
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpt2ja-accelerator-check-XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

SITE="${GPT2JA_SITE:-${TMPDIR:-/tmp}/gpt2ja-site}"
if ! "$PY" -c "import keras_hub, pydantic, typer, pyppmd, datasketch" >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$DIR"/wheels/*.whl || { echo "error: installing $DIR/wheels failed" >&2; exit 1; }
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=jax \
  JAX_COMPILATION_CACHE_DIR="$WORK/jax-cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
GPT2JA=("$PY" -m gpt2ja)

DATA="$DIR/data"
SHARDS="$DATA/root/shards"
HELDOUT="$DATA/heldout"
if [ "$SIZES" = tiny ]; then
  MATMUL=2048 MM_DTYPE=fp32 BENCH_PRESET=tiny BENCH_VOCAB=3000 BENCH_SEQ=128 BENCH_MICRO=4 BENCH_ACCUM=2
  BENCH_STEPS=5 BENCH_WARMUP=2 PRECISION=off TORCH_ARGS=(--dtype fp32 --no-compile --threads 1)
  TORCH_THREADS=(--threads 1) JUDGE=()  # a shared 2-core CPU: PyTorch's OpenMP threads stall when a core is busy
  RUN_PRESET=tiny RUN_MICRO=4 RUN_BATCH=1024 RUN_STEPS=12 RUN_CKPT=4 PRIME=20000
else
  MATMUL=8192 MM_DTYPE=bf16 BENCH_PRESET=small BENCH_VOCAB=50304 BENCH_SEQ=1024 BENCH_MICRO=16 BENCH_ACCUM=2
  BENCH_STEPS=30 BENCH_WARMUP=5 PRECISION=bf16 TORCH_ARGS=(--dtype bf16) TORCH_THREADS=() JUDGE=(--judge)
  RUN_PRESET=small RUN_MICRO=16 RUN_BATCH=16384 RUN_STEPS=24 RUN_CKPT=8 PRIME=4000000
fi

: > "$REPORT"
say() { printf '%s\n' "$*" >> "$REPORT"; printf '%s\n' "$*"; }
block() {  # block CMD...: the command's output as a code block of the report; its status
  say '```'
  "$@" > "$WORK/block.out" 2>&1
  local rc=$?
  grep -v -E '^(WARNING: All log messages before absl|I0000|W0000|E0000)' "$WORK/block.out" | tee -a "$REPORT"
  say '```'
  return $rc
}
PASSED=0
FAILED=()
step() {  # step N TITLE FUNCTION: a report section; a failing step is recorded and the next one runs
  local n="$1" title="$2" fn="$3" t0=$SECONDS
  say ""
  say "## $n. $title"
  say ""
  if "$fn"; then
    PASSED=$((PASSED + 1)); say ""; say "Step $n passed ($((SECONDS - t0)) s)."
  else
    FAILED+=("$n"); say ""; say "**Step $n FAILED** ($((SECONDS - t0)) s): the output above says where."
  fi
}

say "# Accelerator check ($([ "$SIZES" = tiny ] && echo "CPU smoke run, tiny sizes, device stand-in" || echo "full"))"
say ""
say "$(date -u +%Y-%m-%dT%H:%M:%SZ) · gpt2ja $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "(no git)") · \
$(uname -srm) · $("$PY" -c 'import platform; print("Python", platform.python_version())')"
say ""
say "Carried from \`--prepare\`: $(ls "$DIR"/wheels | tr '\n' ' ')"

step1() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    block nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
  else
    say "nvidia-smi: not found (no NVIDIA GPU here)"
  fi
  block "$PY" - <<'EOF' || return 1
import importlib.util, sys
sys.path.insert(0, "benchmarks")  # the repo root is the working directory
import ceiling
for line in ceiling.machine_lines():
    print(line)
try:
    import tensorflow  # noqa: F401
    print("import tensorflow: works (TensorFlow", tensorflow.__version__, "is installed)")
except ImportError as err:
    print("import tensorflow: ImportError:", err)
import jax
print("jax.devices():", jax.devices())
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(),
      *( [torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"]
         if torch.cuda.is_available() else []))
EOF
  say ""
  say "Matmul ceiling, ${MM_DTYPE}, ${MATMUL}² (4 chained products in one call, best of 5), each framework in its own process:"
  block "$PY" "$REPO/benchmarks/ceiling.py" --framework jax --dtype "$MM_DTYPE" --size "$MATMUL" --json || return 1
  cp "$WORK/block.out" "$WORK/ceiling-jax.json"
  block "$PY" "$REPO/benchmarks/ceiling.py" --framework torch --dtype "$MM_DTYPE" --size "$MATMUL" --json \
    "${TORCH_THREADS[@]}" || return 1
  cp "$WORK/block.out" "$WORK/ceiling-torch.json"
}

step2() {
  say "The project's JAX train step (\`gpt2ja.model.trainer_jax.make_step\`, what \`gpt2ja train --backend jax\` runs) on random ids:"
  block "$PY" "$REPO/benchmarks/model_bench.py" --backend jax --presets "$BENCH_PRESET" --vocab "$BENCH_VOCAB" \
    --seq-len "$BENCH_SEQ" --micro-batch "$BENCH_MICRO" --accum "$BENCH_ACCUM" --steps "$BENCH_STEPS" \
    --warmup "$BENCH_WARMUP" --mixed-precision "$PRECISION" --dropout 0 --matmul-size "$MATMUL" || return 1
  grep '^RESULT ' "$WORK/block.out" | tail -1 | cut -c8- > "$WORK/jax.json"
  [ ${#JUDGE[@]} = 0 ] || ! grep -q 'BENCHMARK BUG' "$WORK/block.out"
}

step3() {
  say "benchmarks/torch_gpt2.py, written as PyTorch users write GPT-2 (nanoGPT style), the same shape and batch:"
  block "$PY" "$REPO/benchmarks/torch_gpt2.py" --preset "$BENCH_PRESET" --vocab "$BENCH_VOCAB" --seq-len "$BENCH_SEQ" \
    --micro-batch "$BENCH_MICRO" --accum "$BENCH_ACCUM" --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" \
    --dropout 0 "${TORCH_ARGS[@]}" || return 1
  grep '^RESULT ' "$WORK/block.out" | tail -1 | cut -c8- > "$WORK/torch.json"
  say ""
  block "$PY" "$REPO/benchmarks/accelerator_report.py" compare --jax "$WORK/jax.json" --torch "$WORK/torch.json" \
    --ceiling-jax "$WORK/ceiling-jax.json" --ceiling-torch "$WORK/ceiling-torch.json" "${JUDGE[@]}"
}

RUN_A="$WORK/runs/killed" RUN_B="$WORK/runs/unbroken"
train_cmd() {  # train_cmd RUN: the one command both runs use
  TRAIN=("${GPT2JA[@]}" train --backend jax --data "$SHARDS" --run "$1" --preset "$RUN_PRESET" --steps "$RUN_STEPS"
         --batch-tokens "$RUN_BATCH" --micro-batch "$RUN_MICRO" --warmup-steps 2 --mixed-precision "$PRECISION"
         --set "checkpoint_every=$RUN_CKPT" --set "eval_every=$RUN_CKPT" --set eval_batches=2
         --set eval_sample_tokens=0 --set log_every=1)
}

step4() {
  # two JAX processes share the GPU (the unbroken run beside the killed one, then beside its resume): JAX takes
  # 75 % of the GPU's memory per process by default, so each gets 45 % (`small` at micro-batch 16 needs far less)
  local -x XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
  train_cmd "$RUN_A"
  say "Shards: $SHARDS ($("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); \
print(f\"{d['training_works']} works, {d['shard_counts']['tokens']:,} tokens, seq_len {d['seq_len']}, vocabulary {d['vocab']:,}\")" \
"$DATA/PREPARED.json")). Both runs: \`gpt2ja ${TRAIN[*]:3}\` (run folder aside)."
  "${TRAIN[@]}" > "$WORK/train-a1.log" 2>&1 &
  local a=$!; PIDS+=("$a")
  train_cmd "$RUN_B"
  "${TRAIN[@]}" > "$WORK/train-b.log" 2>&1 &
  local b=$!; PIDS+=("$b")
  until ls "$RUN_A"/checkpoints/ckpt-*.npz >/dev/null 2>&1; do
    if ! kill -0 "$a" 2>/dev/null; then
      say "The first run ended before its first checkpoint:"; block tail -25 "$WORK/train-a1.log"; return 1
    fi
    sleep 0.2
  done
  kill -9 "$a" 2>/dev/null; wait "$a" 2>/dev/null
  local killed_at
  killed_at=$(ls "$RUN_A/checkpoints" | sed -n 's/^ckpt-\([0-9]*\)\.npz$/\1/p' | sort -n | tail -1)
  say "SIGKILL after checkpoint $killed_at (ckpt-$killed_at.npz); the same command again resumes it:"
  train_cmd "$RUN_A"
  block "${TRAIN[@]}" || return 1
  wait "$b"; local rb=$?
  say ""
  say "The uninterrupted run (the same command in another folder, trained alongside): exit $rb, its last lines:"
  block tail -4 "$WORK/train-b.log"
  [ "$rb" = 0 ] || return 1
  say ""
  block "$PY" "$REPO/benchmarks/accelerator_report.py" resume --killed "$RUN_A" --unbroken "$RUN_B" \
    --steps "$RUN_STEPS" $([ "$SIZES" = tiny ] && echo --bitwise)
}

step5() {
  say "\`gpt2ja eval\` on the held-out author ($HELDOUT), PPMd primed with the run's own training text:"
  block "${GPT2JA[@]}" eval --run "$RUN_A" --text "$HELDOUT" --prime-chars "$PRIME" || return 1
  say ""
  block "${GPT2JA[@]}" export hf --run "$RUN_A" --out "$WORK/export-hf" || return 1
  grep -q "logits" "$WORK/block.out"
}

T0=$SECONDS
step 1 "Device and bf16 matmul ceiling (JAX, PyTorch)" step1
step 2 "gpt2ja's JAX train step: $BENCH_PRESET at GPT-2's shape (vocabulary $BENCH_VOCAB, seq_len $BENCH_SEQ, $PRECISION)" step2
step 3 "PyTorch baseline of the same shape (nanoGPT style)" step3
step 4 "gpt2ja train --backend jax on real shards: SIGKILL after the first checkpoint, resume, against an unbroken run" step4
step 5 "gpt2ja eval (with the PPMd baselines) and gpt2ja export hf (logits checked against transformers)" step5
say ""
if [ ${#FAILED[@]} = 0 ]; then
  say "All five steps passed in $((SECONDS - T0)) s."
  exit 0
fi
say "$PASSED of 5 steps passed in $((SECONDS - T0)) s; failed: ${FAILED[*]}."
exit 1

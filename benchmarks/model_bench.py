"""GPT-2 speed on this machine: training tokens/s, model FLOP/s, matmul FLOP/s, "MFU", and generation with/without the KV cache.

Training: each preset trains ``--steps`` real optimizer steps (``model.train.train``,
the same loop as ``gpt2ja train``) on a shards artifact; the figure is the median
``tokens_per_s`` the run logs after the first (compile) step.

Model FLOPs per token, as nanoGPT counts them (``estimate_mfu``, after the
PaLM paper's appendix B): ``6·N + 12·L·H·Q·T`` with N the parameters without
the position embedding (the tied output layer counts once, through the token
embedding), L layers, H heads, Q head width, T the sequence length. Model FLOP/s
= that × tokens/s.

The ceiling it is compared with is *measured in the same run*: ``tf.matmul`` on
large square matrices of the training precision (fp32 on CPU; bf16 with
``--mixed-precision bf16``), the best of a few timed repeats. Their ratio is the
"MFU" of this script; with ``--peak-tflops`` (a GPU's datasheet figure) the ratio
to the datasheet peak is printed too, which is the usual definition.

Generation: a model of the preset with random weights decodes 256 new tokens
for one prompt with the fixed-size KV cache (one position per step) and
without it (a full forward pass over the whole window per step); the end-of-text
id is the last id, masked like the padding ids (never sampled), so every row runs
its full 256 tokens and the two timings cover the same work.

Usage, CPU (the shards come from `gpt2ja tokenizer train` + `gpt2ja shards` over
the aozora-bulk clean corpus; see README "Speed")::

    .venv/bin/python benchmarks/model_bench.py --data data/bulk/datasets/aozora-bulk/sp8k-1024 \\
        --presets tiny,mini,small --micro-batch 4 --steps 5

GPU (bf16, XLA; the small and medium presets; the issue's aim is ≥ 40 % of the datasheet peak)::

    python benchmarks/model_bench.py --data gs://bucket/datasets/ja/sp32k-1024 --presets small,medium \\
        --mixed-precision bf16 --xla --micro-batch 16 --steps 20 --peak-tflops 989 --matmul-size 8192
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from crawl_bench import machine  # noqa: E402

NEW_TOKENS = 256


def flops_per_token(cfg, seq_len: int) -> float:
    """nanoGPT's 6N + 12·L·H·Q·T for a model config at ``seq_len``."""
    from model.presets import param_count

    n = param_count(cfg) - cfg.context_length * cfg.hidden_dim  # without position embeddings
    return 6 * n + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def matmul_flops(dtype: str, size: int, repeats: int = 5) -> float:
    """Best FLOP/s of ``size``² × ``size``² ``tf.matmul`` in ``dtype`` on the default device (2·size³ per product)."""
    import tensorflow as tf

    a = tf.random.normal([size, size], dtype=tf.float32)
    a = tf.cast(a, dtype)
    b = tf.cast(tf.random.normal([size, size], dtype=tf.float32), dtype)

    @tf.function
    def chain(x, y, n):
        acc = tf.zeros([], tf.float32)
        for _ in tf.range(n):
            acc += tf.cast(tf.linalg.matmul(x, y)[0, 0], tf.float32)  # keep each product alive
        return acc

    n = tf.constant(4)
    float(chain(a, b, n))  # trace, warm up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        float(chain(a, b, n))
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0))
    return best


def training_rate(shards: str, preset: str, steps: int, micro_batch: int, *, xla: bool,
                  mixed_precision: str) -> float:
    from infra import storage
    from model.train import TrainConfig, train

    seq_len = storage.read_manifest(shards)["seq_len"]
    with tempfile.TemporaryDirectory() as run:
        cfg = TrainConfig(data=shards, run=os.path.join(run, preset), preset=preset, steps=steps,
                          batch_tokens=micro_batch * seq_len, micro_batch=micro_batch, warmup_steps=0,
                          log_every=1, eval_batches=0, checkpoint_every=10**6, jit_compile=xla,
                          mixed_precision=mixed_precision)
        train(cfg, progress=None)
        with open(os.path.join(run, preset, "metrics.jsonl"), encoding="utf-8") as fh:
            rates = [json.loads(line)["tokens_per_s"] for line in fh if '"tokens_per_s"' in line]
    steady = rates[1:] or rates  # the first step includes tracing (and XLA compiling) the step
    return statistics.median(steady)


def generation_rates(preset: str, vocab_size: int, *, xla: bool, mixed_precision: str) -> tuple[float, float]:
    """(tokens/s with the KV cache, tokens/s without) for 256 new tokens from a one-token prompt."""
    import keras

    from model import gpt2
    from model.generate import Generator
    from model.presets import ModelConfig

    keras.utils.set_random_seed(0)
    cfg = ModelConfig.from_preset(preset, vocab_size=vocab_size, context_length=max(512, NEW_TOKENS + 1))
    dtype = {"off": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[mixed_precision]
    lm = gpt2.build_model(cfg, dtype=dtype)
    # the last id plays end-of-text and is masked like padding (vocab_size - 1 sampled ids): never drawn
    gen = Generator(lm, vocab_size=vocab_size - 1, eos_id=vocab_size - 1, jit_compile=xla)
    rates = []
    for use_cache in (True, False):
        gen.generate_ids([[1]], max_new_tokens=8, seed=1, use_cache=use_cache)  # trace and compile
        t0 = time.perf_counter()
        [(ids, _)] = gen.generate_ids([[1]], max_new_tokens=NEW_TOKENS, seed=1, use_cache=use_cache)
        rates.append(len(ids) / (time.perf_counter() - t0))
    return rates[0], rates[1]


def device_name() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU only, TensorFlow {tf.__version__}, {os.cpu_count()} cores"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"{len(gpus)} × {details.get('device_name', 'GPU')}, TensorFlow {tf.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a shards artifact (gpt2ja shards), local or gs://")
    ap.add_argument("--presets", default="tiny,mini,small")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per preset (the first is not counted)")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--xla", action="store_true", help="compile training and decoding steps with XLA")
    ap.add_argument("--mixed-precision", default="off", choices=["off", "bf16", "fp16"])
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--peak-tflops", type=float, default=None, help="datasheet peak of the device in this precision")
    ap.add_argument("--generation-presets", default="tiny,mini,small",
                    help="presets for the KV-cache comparison ('' = none)")
    args = ap.parse_args()

    import tensorflow as tf

    from infra import storage
    from model.presets import ModelConfig

    print(f"machine: {machine()}")
    print(f"device: {device_name()}; load average before: {os.getloadavg()[0]:.2f}")
    manifest = storage.read_manifest(args.data)
    seq_len, vocab = manifest["seq_len"], manifest["vocab_size"]
    matmul_dtype = {"off": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[args.mixed_precision]
    ceiling = matmul_flops(matmul_dtype, args.matmul_size)
    precision = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}[args.mixed_precision]
    print(f"{precision} tf.matmul {args.matmul_size}²: {ceiling / 1e9:,.1f} GFLOP/s (best of 5)")
    print(f"training: seq_len {seq_len}, vocabulary {vocab:,}, micro-batch {args.micro_batch}, "
          f"{args.steps} steps, XLA {'on' if args.xla else 'off'}, precision {precision}")
    print("| preset | parameters | tokens/s | model GFLOP/s | MFU vs measured matmul"
          + (" | MFU vs datasheet" if args.peak_tflops else "") + " |")
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        cfg = ModelConfig.from_preset(preset, vocab_size=vocab, context_length=seq_len)
        rate = training_rate(args.data, preset, args.steps, args.micro_batch, xla=args.xla,
                             mixed_precision=args.mixed_precision)
        model_flops = rate * flops_per_token(cfg, seq_len)
        from model.presets import param_count

        row = (f"| {preset} | {param_count(cfg) / 1e6:,.1f} M | {rate:,.0f} | {model_flops / 1e9:,.1f} | "
               f"{model_flops / ceiling:.2f}")
        if args.peak_tflops:
            row += f" | {model_flops / (args.peak_tflops * 1e12):.1%}"
        print(row + " |", flush=True)
    after = matmul_flops(matmul_dtype, args.matmul_size)
    print(f"{precision} tf.matmul again after training: {after / 1e9:,.1f} GFLOP/s "
          f"(the MFU column uses the first figure)")

    gen_presets = [p.strip() for p in args.generation_presets.split(",") if p.strip()]
    if gen_presets:
        print(f"generation: {NEW_TOKENS} new tokens, batch 1, context 512, random weights")
        print("| preset | with KV cache tokens/s | without tokens/s | speed-up |")
        for preset in gen_presets:
            cached, full = generation_rates(preset, vocab, xla=args.xla, mixed_precision=args.mixed_precision)
            print(f"| {preset} | {cached:,.1f} | {full:,.1f} | {cached / full:.1f}× |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}; Python {platform.python_version()}")


if __name__ == "__main__":
    main()

"""GPT-2 speed on this machine: training tokens/s, model FLOP/s, matmul FLOP/s, "MFU", generation with/without KV cache.

Training: each preset trains ``--steps`` real optimizer steps (``gpt2ja.model.train.train``,
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
the aozora-bulk clean corpus; see docs/speed.md)::

    .venv/bin/python benchmarks/model_bench.py --data data/bulk/datasets/aozora-bulk/sp8k-1024 \\
        --presets tiny,mini,small --micro-batch 4 --steps 5

GPU (bf16, XLA; the small and medium presets; the issue's aim is ≥ 40 % of the datasheet peak)::

    python benchmarks/model_bench.py --data gs://bucket/datasets/ja/sp32k-1024 --presets small,medium \\
        --mixed-precision bf16 --xla --micro-batch 16 --steps 20 --peak-tflops 989 --matmul-size 8192

JAX (``--backend jax``, no TensorFlow imported): the project's own JAX train step,
:func:`gpt2ja.model.trainer_jax.make_step` (the step ``gpt2ja train --backend jax`` runs:
``stateless_call``, micro-batches accumulated by ``lax.scan`` inside the jitted step,
donated state, AdamW, clipping), on random ids of ``--vocab`` ids drawn once on the
device (a step's cost does not depend on them), so no shards are needed and the
vocabulary can be GPT-2's 50,304. Tokens/s = measured steps × tokens per step ÷ their
wall time, synchronised once after them (as the trainer only waits at log steps). The
ceiling is ``jax.numpy`` matmul in the training precision, in the same process; the
datasheet peak comes from ``--peak-tflops`` or, for a known GPU, from
:data:`ceiling.DATASHEET_BF16_TFLOPS` (the source is printed). One GPU, or the CPU::

    python benchmarks/model_bench.py --backend jax --presets small --vocab 50304 --seq-len 1024 \\
        --micro-batch 16 --accum 2 --steps 30 --warmup 10 --mixed-precision bf16 --dropout 0 --matmul-size 8192
    .venv/bin/python benchmarks/model_bench.py --backend jax --presets tiny --vocab 3000 --seq-len 128 \\
        --micro-batch 4 --steps 4 --warmup 2 --generation-presets ''

A model FLOP/s above the measured ceiling is printed as a benchmark bug (:func:`ceiling.check`), not as a row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import ceiling  # noqa: E402

NEW_TOKENS = 256


def flops_per_token(cfg, seq_len: int) -> float:
    """PaLM's 6·N + 12·L·H·T (:func:`ceiling.flops_per_token`) for a model config at ``seq_len``."""
    from gpt2ja.model.presets import param_count

    n = param_count(cfg) - cfg.context_length * cfg.hidden_dim  # without position embeddings
    return ceiling.flops_per_token(n, cfg.num_layers, cfg.hidden_dim, seq_len)


def jax_training_rate(
    preset: str,
    vocab: int,
    seq_len: int,
    micro_batch: int,
    accum: int,
    steps: int,
    warmup: int,
    *,
    mixed_precision: str,
    dropout: float | None,
) -> dict:
    """tokens/s of :func:`gpt2ja.model.trainer_jax.make_step` on random ids (one device), after ``warmup`` steps."""
    from gpt2ja.model import backend

    backend.use("jax")
    import jax
    import keras
    import numpy as np

    from gpt2ja.model import gpt2, trainer_jax
    from gpt2ja.model.optim import make_optimizer
    from gpt2ja.model.presets import ModelConfig
    from gpt2ja.model.train import TrainConfig

    model_cfg = ModelConfig.from_preset(preset, vocab_size=vocab, context_length=seq_len, dropout=dropout)
    tokens = accum * micro_batch * seq_len
    cfg = TrainConfig(
        data="synthetic",
        run="unused",
        preset=preset,
        steps=10**6,
        warmup_steps=0,
        batch_tokens=tokens,
        micro_batch=micro_batch,
        backend="jax",
        dropout=dropout,
        mixed_precision=mixed_precision,
    )
    keras.utils.set_random_seed(0)
    lm = gpt2.build_model(model_cfg, dtype="mixed_bfloat16" if mixed_precision == "bf16" else None)
    opt = make_optimizer(cfg, lm)
    step = trainer_jax.make_step(cfg, lm, opt, accum=accum)
    state = [
        [v.value for v in lm.trainable_variables],
        [v.value for v in lm.non_trainable_variables],
        [v.value for v in opt.variables],
    ]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(accum, micro_batch, seq_len + 1), dtype=np.int32)
    inputs, targets = jax.device_put(ids[..., :-1]), jax.device_put(ids[..., 1:])
    first = []
    for _ in range(warmup):  # the first compiles
        t0 = time.perf_counter()
        *state, loss, _norm = step(*state, inputs, targets)
        float(loss)
        first.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps - warmup):
        *state, loss, _norm = step(*state, inputs, targets)
    final = float(loss)  # waits for every step dispatched
    wall = time.perf_counter() - t0
    return {
        "tokens_per_s": (steps - warmup) * tokens / wall,
        "tokens_per_step": tokens,
        "warmup_step_s": first,
        "measured_steps": steps - warmup,
        "measured_s": wall,
        "loss": final,
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "attention_dropout": model_cfg.dropout,
    }


def training_rate(shards: str, preset: str, steps: int, micro_batch: int, *, xla: bool, mixed_precision: str) -> float:
    from gpt2ja.infra import storage
    from gpt2ja.model.train import TrainConfig, train

    seq_len = storage.read_manifest(shards)["seq_len"]
    with tempfile.TemporaryDirectory() as run:
        cfg = TrainConfig(
            data=shards,
            run=os.path.join(run, preset),
            preset=preset,
            steps=steps,
            batch_tokens=micro_batch * seq_len,
            micro_batch=micro_batch,
            warmup_steps=0,
            log_every=1,
            eval_batches=0,
            checkpoint_every=10**6,
            jit_compile=xla,
            mixed_precision=mixed_precision,
        )
        train(cfg, progress=None)
        with open(os.path.join(run, preset, "metrics.jsonl"), encoding="utf-8") as fh:
            rates = [json.loads(line)["tokens_per_s"] for line in fh if '"tokens_per_s"' in line]
    steady = rates[1:] or rates  # the first step includes tracing (and XLA compiling) the step
    return statistics.median(steady)


def generation_rates(preset: str, vocab_size: int, *, xla: bool, mixed_precision: str) -> tuple[float, float]:
    """(tokens/s with the KV cache, tokens/s without) for 256 new tokens from a one-token prompt."""
    import keras

    from gpt2ja.model import gpt2
    from gpt2ja.model.generate import Generator
    from gpt2ja.model.presets import ModelConfig

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


def peak_of(device: str, given: float | None) -> tuple[float | None, str]:
    """(datasheet TFLOP/s, where it comes from): ``--peak-tflops`` if given, else the table's figure for the GPU."""
    if given:
        return given, "--peak-tflops"
    found = ceiling.datasheet_peak(device)
    return (found[0], found[1]) if found else (None, "")


def row(preset: str, params: int, rate: float, model_flops: float, ceil: float, peak: float | None) -> str:
    """One table row, or a benchmark-bug line when the figure implies more than the measured ceiling."""
    bug = ceiling.check(f"{preset} at {rate:,.0f} tokens/s", model_flops, ceil)
    if bug:
        return bug
    out = f"| {preset} | {params / 1e6:,.1f} M | {rate:,.0f} | {model_flops / 1e9:,.1f} | {model_flops / ceil:.2f}"
    if peak:
        out += f" | {model_flops / (peak * 1e12):.1%}"
    return out + " |"


def main_jax(args) -> None:
    """``--backend jax``: the JAX train step on random ids, against the jnp matmul ceiling and the datasheet."""
    from gpt2ja.model import backend

    backend.use("jax")
    import jax

    from gpt2ja.model.presets import ModelConfig, param_count

    for line in ceiling.machine_lines():
        print(line)
    dev = jax.devices()[0]
    precision = "bf16" if args.mixed_precision == "bf16" else "fp32"
    print(
        f"device: {len(jax.devices())} × {dev.device_kind} ({dev.platform}), JAX {jax.__version__}; the "
        "benchmark runs on the first"
    )
    ceil = ceiling.jax_matmul(precision, args.matmul_size)
    peak, source = peak_of(dev.device_kind, args.peak_tflops)
    print(
        f"{precision} jnp matmul {args.matmul_size}² (4 chained, best of 5): {ceil / 1e12:,.3f} TFLOP/s"
        + (f"; datasheet peak {peak:g} TFLOP/s dense bf16 ({source})" if peak else "")
    )
    print(
        f"training (gpt2ja.model.trainer_jax.make_step): random ids of {args.vocab:,}, seq_len {args.seq_len}, "
        f"{args.accum} × {args.micro_batch} sequences a step, {args.steps} steps ({args.warmup} not counted), "
        f"precision {args.mixed_precision}, dropout {'preset' if args.dropout is None else args.dropout}; "
        "model FLOPs per token 6·N + 12·L·H·T (PaLM)"
    )
    print(
        "| preset | parameters | tokens/s | model GFLOP/s | MFU vs measured matmul"
        + (" | MFU vs datasheet" if peak else "")
        + " |"
    )
    print("| --- | --- | --- | --- | ---" + (" | ---" if peak else "") + " |")
    results = []
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        cfg = ModelConfig.from_preset(preset, vocab_size=args.vocab, context_length=args.seq_len, dropout=args.dropout)
        got = jax_training_rate(
            preset,
            args.vocab,
            args.seq_len,
            args.micro_batch,
            args.accum,
            args.steps,
            args.warmup,
            mixed_precision=args.mixed_precision,
            dropout=args.dropout,
        )
        fpt = flops_per_token(cfg, args.seq_len)
        model_flops = got["tokens_per_s"] * fpt
        print(row(preset, param_count(cfg), got["tokens_per_s"], model_flops, ceil, peak), flush=True)
        results.append(
            {
                "preset": preset,
                "parameters": param_count(cfg),
                "flops_per_token": fpt,
                "model_flops": model_flops,
                "mfu_measured": model_flops / ceil,
                "mfu_datasheet": model_flops / (peak * 1e12) if peak else None,
                "bug": bool(ceiling.check("", model_flops, ceil)),
                **got,
            }
        )
    print(
        "first steps (compile included): "
        + "; ".join(f"{r['preset']} " + ", ".join(f"{x:.1f} s" for x in r["warmup_step_s"]) for r in results)
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "backend": "jax",
                "jax": jax.__version__,
                "device": dev.device_kind,
                "precision": precision,
                "ceiling_flops": ceil,
                "peak_tflops": peak,
                "peak_source": source,
                "rows": results,
            }
        ),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--backend",
        default="tensorflow",
        choices=["tensorflow", "jax"],
        help="tensorflow: gpt2ja train's loop on --data; jax: gpt2ja.model.trainer_jax's step on random ids",
    )
    ap.add_argument("--data", help="(tensorflow) a shards artifact (gpt2ja shards), local or gs://")
    ap.add_argument("--presets", default="tiny,mini,small")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per preset (the first is not counted)")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--xla", action="store_true", help="(tensorflow) compile training and decoding steps with XLA")
    ap.add_argument("--mixed-precision", default="off", choices=["off", "bf16", "fp16"])
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="datasheet peak of the device in this precision (jax: known GPUs are looked up)",
    )
    ap.add_argument(
        "--generation-presets",
        default="tiny,mini,small",
        help="(tensorflow) presets for the KV-cache comparison ('' = none)",
    )
    ap.add_argument("--vocab", type=int, default=50304, help="(jax) ids of the random data (GPT-2's 50,304)")
    ap.add_argument("--seq-len", type=int, default=1024, help="(jax) sequence length")
    ap.add_argument("--accum", type=int, default=1, help="(jax) micro-batches per optimizer step")
    ap.add_argument("--warmup", type=int, default=2, help="(jax) first steps not counted (compiling)")
    ap.add_argument("--dropout", type=float, default=None, help="(jax) override the preset's dropout")
    args = ap.parse_args()
    if args.backend == "jax":
        if not 0 < args.warmup < args.steps:
            ap.error("--warmup must be at least 1 (the compile) and leave a step to measure")
        main_jax(args)
        return
    if not args.data:
        ap.error("--data is needed with --backend tensorflow")

    import tensorflow as tf

    from gpt2ja.infra import storage
    from gpt2ja.model.presets import ModelConfig, param_count

    for line in ceiling.machine_lines():
        print(line)
    print(f"device: {device_name()}")
    manifest = storage.read_manifest(args.data)
    seq_len, vocab = manifest["seq_len"], manifest["vocab_size"]
    precision = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}[args.mixed_precision]
    ceil = ceiling.tf_matmul(precision, args.matmul_size)
    peak = args.peak_tflops
    print(f"{precision} tf.matmul {args.matmul_size}² (4 chained, best of 5): {ceil / 1e9:,.1f} GFLOP/s")
    print(
        f"training: seq_len {seq_len}, vocabulary {vocab:,}, micro-batch {args.micro_batch}, "
        f"{args.steps} steps, XLA {'on' if args.xla else 'off'}, precision {precision}; model FLOPs per token "
        "6·N + 12·L·H·T (PaLM)"
    )
    print(
        "| preset | parameters | tokens/s | model GFLOP/s | MFU vs measured matmul"
        + (" | MFU vs datasheet" if peak else "")
        + " |"
    )
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        cfg = ModelConfig.from_preset(preset, vocab_size=vocab, context_length=seq_len)
        rate = training_rate(
            args.data, preset, args.steps, args.micro_batch, xla=args.xla, mixed_precision=args.mixed_precision
        )
        print(row(preset, param_count(cfg), rate, rate * flops_per_token(cfg, seq_len), ceil, peak), flush=True)
    after = ceiling.tf_matmul(precision, args.matmul_size)
    print(
        f"{precision} tf.matmul again after training: {after / 1e9:,.1f} GFLOP/s (the MFU column uses the first figure)"
    )
    del tf

    gen_presets = [p.strip() for p in args.generation_presets.split(",") if p.strip()]
    if gen_presets:
        print(f"generation: {NEW_TOKENS} new tokens, batch 1, context 512, random weights")
        print("| preset | with KV cache tokens/s | without tokens/s | speed-up |")
        for preset in gen_presets:
            cached, full = generation_rates(preset, vocab, xla=args.xla, mixed_precision=args.mixed_precision)
            print(f"| {preset} | {cached:,.1f} | {full:,.1f} | {cached / full:.1f}× |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

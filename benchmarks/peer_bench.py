"""gpt2ja against its peer: PyTorch Hugging Face GPT-2 of the same shape, training tokens/s and generation tokens/s.

Training (per preset): gpt2ja's own step on each of its backends, the code path of ``gpt2ja train``
(``gpt2ja.model.train.train`` with ``benchmarks/model_bench.py``'s training config:
real shards, AdamW with decay on the kernels only, global-norm clipping to 1.0,
fp32, XLA off unless ``--xla``) on TensorFlow (``gpt2ja-tf``) and on JAX
(``gpt2ja-jax``: ``--backend jax``, :mod:`gpt2ja.model.trainer_jax`'s one jitted step; XLA
always, on every core), against ``transformers``' ``GPT2LMHeadModel``
built from the same shape (padded vocabulary, tied output layer, ``gelu_new``,
the preset's dropout, transformers' default attention implementation) trained
with ``torch.optim.AdamW`` (the same hyper-parameters, decay on the 2-D
matmul weights only), ``cross_entropy`` over the vocabulary and
``clip_grad_norm_(1.0)``, eagerly and under ``torch.compile`` (the model;
loss, clipping and the optimizer step stay eager). Sequences of ``--seq-len``,
``--micro-batch`` sequences per step (one micro-batch, no accumulation), the
same number of steps; the figure of one measurement is the median tokens/s of
the steps after the first (the first traces or compiles). The PyTorch side
feeds pre-drawn random ids from memory; gpt2ja reads its shards through
``tf.data`` as ``gpt2ja train`` does (hundreds of times faster than any step
here: docs/speed.md).

Honest figures: beside every training figure the script prints the model
FLOP/s it implies (PaLM's ``6·N + 12·L·H·T`` per token, ``ceiling.flops_per_token``)
and the fp32 matmul ceiling (``benchmarks/ceiling.py``, 2048², 4 chained
products, best of 5) measured in the same run in each framework (TensorFlow,
JAX, PyTorch; each in its own process with the trainers' threads) before the
training rounds and after them. A figure above the highest ceiling any
framework reached in the run is printed as a benchmark bug, not as a result:
no step can outrun the machine's best matrix product. One above its own
framework's ceiling but not the highest is marked ``(above its framework's
matmul)``: a framework may reach more FLOP/s in a fused step than in one
``matmul`` call, or the load moved between the two measurements.

Generation: a run of the preset trained for one step from random weights (the
real trainer), and its own Hugging Face export (``gpt2ja.model.export.export_hf``).
``Generator.generate_ids`` (fixed-size KV cache, XLA as ``gpt2ja generate``
chooses: on, except for one row of a model of 20 M parameters or more on the
CPU) against ``GPT2LMHeadModel.generate`` (its dynamic KV cache), greedy
and sampling (temperature 1, top-k off, top-p 0.99), batches of one or more
copies of a ``--prompt-len``-id random prompt, ``--new-tokens`` new ids on
every row: gpt2ja masks one id and calls it end-of-text (never drawn), the
Hugging Face side passes ``min_new_tokens`` (end-of-text masked until then).
tokens/s = rows × new tokens / wall time of one ``generate`` call after one
warm-up call.

Method: every measurement is a fresh subprocess (``peer_bench.py --worker
…``), one at a time, TensorFlow and PyTorch never in one process; threads set
explicitly to all cores (TensorFlow intra- and inter-op, ``torch.set_num_threads``
and interop). Rounds interleave the contenders (gpt2ja-tf, gpt2ja-jax, torch-eager, torch-compile,
gpt2ja-tf, …); the table gives the median over ``--rounds`` rounds and the spread
(min–max). Without ``--data`` the script builds its own data once under
``--work``: a synthetic Japanese-looking corpus → a sentencepiece unigram
tokenizer of ``--vocab`` ids → shards of ``--seq-len`` (the real stages).

Profile (``--profile tiny,mini``): the parts of one training step, each timed
alone in one process per framework (forward, loss, backward, the tied LM head
with the softmax cross-entropy, the optimizer, the data pipeline; gpt2ja's
whole step with and without ``jit_compile``). Findings: docs/speed-profile.md.

Threads: on a machine whose cores other jobs share, PyTorch's OpenMP threads
slow down many-fold when one core is busy (docs/speed-profile.md); ``--cores 1``
runs both sides single-threaded, a fairer comparison there.

Usage (CPU; about 15 minutes for tiny and mini on two cores)::

    .venv/bin/python benchmarks/peer_bench.py --presets tiny,mini --rounds 3 --json /tmp/peer.json
    .venv/bin/python benchmarks/peer_bench.py --quick              # tiny only, 1 round, short generation
    .venv/bin/python benchmarks/peer_bench.py --presets small --rounds 1 --steps 4 --warmup 2 --gen-presets ''
    .venv/bin/python benchmarks/peer_bench.py --presets tiny --contenders gpt2ja-jax,torch-eager --gen-presets ''
    .venv/bin/python benchmarks/peer_bench.py --presets '' --gen-presets '' --profile tiny
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

TRAIN_KINDS = ("gpt2ja-tf", "gpt2ja-jax", "torch-eager", "torch-compile")
#: the worker of each contender, and the framework whose matmul ceiling it is held against
TRAIN_WORKER = {
    "gpt2ja-tf": "train-tf",
    "gpt2ja-jax": "train-jax",
    "torch-eager": "train-torch",
    "torch-compile": "train-torch",
}
FRAMEWORK = {"gpt2ja-tf": "tf", "gpt2ja-jax": "jax", "torch-eager": "torch", "torch-compile": "torch"}
FRAMEWORK_NAME = {"tf": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
CEILING_SIZE = 2048
GEN_SIDES = ("gpt2ja", "hf")
GEN_MODES = ("greedy", "sample")
LEARNING_RATE, BETAS, EPS, WEIGHT_DECAY, CLIP = 6e-4, (0.9, 0.95), 1e-8, 0.1, 1.0  # TrainConfig's defaults


# ----------------------------------------------------------------- the workers (one measurement each)


def set_tf_threads(cores: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    return {
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def set_torch_threads(cores: int) -> dict:
    import torch

    torch.set_num_threads(cores)
    torch.set_num_interop_threads(cores)
    return {"torch_threads": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}


def worker_prepare(spec: dict) -> dict:
    """Shards (unless given) and, per generation preset, a one-step run and its Hugging Face export."""
    set_tf_threads(spec["cores"])
    work = Path(spec["work"])
    data = spec["data"] or build_shards(work, spec["vocab"], spec["seq_len"])
    from gpt2ja.model.export import export_hf
    from gpt2ja.model.train import TrainConfig, train

    exports = {}
    for preset in spec["gen_presets"]:
        run, out = work / f"run-{preset}", work / f"run-{preset}-hf"
        from gpt2ja.infra import storage

        seq_len = storage.read_manifest(data)["seq_len"]
        train(
            TrainConfig(
                data=data,
                run=str(run),
                preset=preset,
                steps=1,
                batch_tokens=2 * seq_len,
                micro_batch=2,
                warmup_steps=0,
                eval_batches=0,
                log_every=1,
            ),
            progress=None,
        )
        export_hf(str(run), str(out))
        exports[preset] = {"run": str(run), "export": str(out)}
    return {"data": data, "exports": exports}


def synthetic_text(rng: random.Random, words: list[str], weights: list[float], sentences: int) -> str:
    """Lines of 1–4 sentences of Zipf-drawn 'words', each ending with 。 (gives sentencepiece real pieces)."""
    lines, line = [], []
    for _ in range(sentences):
        line.append("".join(rng.choices(words, weights, k=rng.randint(4, 16))) + "。")
        if rng.random() < 0.35:
            lines.append("".join(line))
            line = []
    return "\n".join(lines + ["".join(line)])


def build_shards(work: Path, vocab: int, seq_len: int) -> str:
    """Synthetic clean corpus → sentencepiece ``vocab`` → shards of ``seq_len`` under ``work`` (kept for reruns)."""
    from gpt2ja.corpus.document import Document
    from gpt2ja.corpus.jsonl import ShardWriter
    from gpt2ja.infra import storage
    from gpt2ja.tokenization.shards import ShardsConfig, write_shards
    from gpt2ja.tokenization.train import train_tokenizer

    corpus, tok_uri, shards = work / "clean", work / f"sp{vocab}", work / f"sp{vocab}-{seq_len}"
    if storage.read_manifest(str(shards)):
        return str(shards)
    if not storage.read_manifest(str(corpus)):
        rng = random.Random(0)
        chars = (
            [chr(c) for c in range(0x3041, 0x3094)]
            + [chr(c) for c in range(0x30A1, 0x30F7)]
            + [chr(c) for c in range(0x4E00, 0x4E00 + 600)]
        )  # hiragana, katakana, 600 kanji
        words = sorted({"".join(rng.choices(chars, k=rng.randint(1, 4))) for _ in range(30_000)})
        weights = [1.0 / (i + 1) for i in range(len(words))]
        rng.shuffle(weights)
        for split, docs in (("train", 400), ("validation", 20)):
            with ShardWriter(storage.join(str(corpus), split)) as out:
                for i in range(docs):
                    out.write(
                        Document.new(
                            source="synthetic",
                            url=f"bench://{split}/{i}",
                            text=synthetic_text(rng, words, weights, 60),
                            license="benchmark",
                        )
                    )
        files = [storage.file_info(u, root=str(corpus)) for u in storage.list_files(str(corpus))]
        storage.write_manifest(
            str(corpus),
            storage.build_manifest(stage="clean", config={"bench": "peer"}, counts={}, files=files, timings={}),
        )
    train_tokenizer(str(corpus), "sentencepiece", vocab, str(tok_uri), num_threads=2)
    return write_shards(
        str(corpus),
        str(tok_uri),
        str(shards),
        ShardsConfig(seq_len=seq_len, num_shards={"train": 2, "validation": 1}, workers=1),
    )


def worker_train_tf(spec: dict, backend: str = "tensorflow") -> dict:
    """``gpt2ja train`` for ``steps`` steps, logging every step: the run's own ``tokens_per_s`` of each step.

    The config of ``model_bench.training_rate`` (one micro-batch per step, no warmup of the learning rate,
    no validation, no checkpoint before the end), but every step's rate is kept so that ``warmup`` steps
    are dropped on both sides alike. The wall time of the steps, timed here around ``train`` from the
    run's own log lines, is kept beside them (``check_s``): the trainer's window and this clock must agree.
    """
    threads = set_tf_threads(spec["cores"]) if backend == "tensorflow" else {"jax": "XLA CPU, all cores"}
    import tempfile

    from gpt2ja.model.train import TrainConfig, train

    stamps = []

    def progress(line: str) -> None:  # the trainer's line for each logged step: when it was said
        if line.startswith("step ") and "tok/s" in line:
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as run:
        cfg = TrainConfig(
            data=spec["data"],
            run=os.path.join(run, spec["preset"]),
            preset=spec["preset"],
            steps=spec["steps"],
            batch_tokens=spec["micro_batch"] * spec["seq_len"],
            micro_batch=spec["micro_batch"],
            warmup_steps=0,
            log_every=1,
            eval_batches=0,
            eval_sample_tokens=0,
            checkpoint_every=10**6,
            jit_compile=spec["xla"] if backend == "tensorflow" else False,
            backend=backend,
        )
        train(cfg, progress=progress)
        with open(os.path.join(run, spec["preset"], "metrics.jsonl"), encoding="utf-8") as fh:
            rates = [json.loads(line)["tokens_per_s"] for line in fh if '"tokens_per_s"' in line]
    tokens = spec["micro_batch"] * spec["seq_len"]
    w = spec["warmup"]
    clock = (len(stamps) - w) * tokens / (stamps[-1] - stamps[w - 1]) if w >= 1 and len(stamps) > w else None
    return {"tokens_per_s": statistics.median(rates[w:]), "step_rates": rates, "clock_tokens_per_s": clock, **threads}


def worker_train_jax(spec: dict) -> dict:
    """``gpt2ja train --backend jax``: the same run as :func:`worker_train_tf`, on JAX (no TensorFlow imported)."""
    from gpt2ja.model import backend

    backend.use("jax")
    return worker_train_tf(spec, backend="jax")


def worker_ceiling(spec: dict) -> dict:
    """fp32 matmul FLOP/s of one framework (``spec["framework"]``), with the trainers' threads."""
    import ceiling

    fw = spec["framework"]
    if fw == "tf":
        set_tf_threads(spec["cores"])
    elif fw == "torch":
        set_torch_threads(spec["cores"])
    elif fw == "jax":
        from gpt2ja.model import backend

        backend.use("jax")
    return {"flops": ceiling.MATMUL[fw]("fp32", spec["size"])}


def torch_model(preset: str, vocab: int, seq_len: int):
    """``GPT2LMHeadModel`` with the shape gpt2ja builds for ``preset`` (config from gpt2ja.model.export.hf_config)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2ja.model.export import hf_config
    from gpt2ja.model.presets import ModelConfig

    cfg = ModelConfig.from_preset(preset, vocab_size=vocab, context_length=seq_len)
    config = {k: v for k, v in hf_config(cfg, eos_id=1).items() if k not in ("architectures", "torch_dtype")}
    return GPT2LMHeadModel(GPT2Config(**config)), cfg


def worker_train_torch(spec: dict) -> dict:
    threads = set_torch_threads(spec["cores"])
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model, cfg = torch_model(spec["preset"], spec["vocab"], spec["seq_len"])
    model.train()
    decay = [
        p
        for n, p in model.named_parameters()
        if p.dim() >= 2 and not n.startswith(("transformer.wte", "transformer.wpe"))
    ]
    rest = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
        lr=LEARNING_RATE,
        betas=BETAS,
        eps=EPS,
    )
    forward = torch.compile(model) if spec["compile"] else model
    b, t, v = spec["micro_batch"], spec["seq_len"], cfg.vocab_size
    data = torch.randint(0, v, (spec["steps"], b, t + 1))
    seconds = []
    for step in range(spec["steps"]):
        t0 = time.perf_counter()
        x, y = data[step, :, :-1], data[step, :, 1:]
        logits = forward(input_ids=x).logits  # (B, T, V_padded)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
        seconds.append(time.perf_counter() - t0)
    rates = [b * t / s for s in seconds]
    return {
        "tokens_per_s": statistics.median(rates[spec["warmup"] :]),
        "step_rates": rates,
        "first_step_s": seconds[0],
        "attention": model.config._attn_implementation,
        **threads,
    }


def prompt_ids(vocab: int, length: int) -> list[int]:
    """A fixed random prompt of ordinary ids (never end-of-text, never the masked last id)."""
    rng = random.Random(1)
    return [rng.randrange(3, vocab - 1) for _ in range(length)]


def worker_gen_tf(spec: dict) -> dict:
    threads = set_tf_threads(spec["cores"])
    from gpt2ja.model.generate import Generator
    from gpt2ja.model.runs import load_run

    run = load_run(spec["run"])
    vocab = run.tokenizer.vocab_size
    # the last id plays end-of-text and is masked like padding: never drawn, every row runs its full length
    gen = Generator(run.model, vocab_size=vocab - 1, eos_id=vocab - 1, jit_compile=True if spec["xla"] else None)
    prompt = prompt_ids(vocab, spec["prompt_len"])
    out = {}
    for batch in spec["batches"]:
        for mode in GEN_MODES:
            kw = {"greedy": True} if mode == "greedy" else {"top_k": 0, "top_p": 0.99, "temperature": 1.0}
            gen.generate_ids([prompt] * batch, max_new_tokens=8, seed=1, **kw)  # trace
            t0 = time.perf_counter()
            res = gen.generate_ids([prompt] * batch, max_new_tokens=spec["new_tokens"], seed=1, **kw)
            wall = time.perf_counter() - t0
            assert all(len(ids) == spec["new_tokens"] for ids, _ in res), "a row stopped early"
            out[f"{mode}-b{batch}"] = batch * spec["new_tokens"] / wall
    return {"tokens_per_s": out, **threads}


def worker_gen_hf(spec: dict) -> dict:
    threads = set_torch_threads(spec["cores"])
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["export"]).eval()
    vocab = model.config.gpt2ja_vocab_size
    prompt = prompt_ids(vocab, spec["prompt_len"])
    out = {}
    with torch.inference_mode():
        for batch in spec["batches"]:
            ids = torch.tensor([prompt] * batch)
            for mode in GEN_MODES:
                kw = (
                    {"do_sample": False}
                    if mode == "greedy"
                    else {"do_sample": True, "top_k": 0, "top_p": 0.99, "temperature": 1.0}
                )
                args = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": True, **kw}
                model.generate(**args, max_new_tokens=8, min_new_tokens=8)  # warm up
                torch.manual_seed(1)
                t0 = time.perf_counter()
                res = model.generate(**args, max_new_tokens=spec["new_tokens"], min_new_tokens=spec["new_tokens"])
                wall = time.perf_counter() - t0
                assert res.shape[1] - ids.shape[1] == spec["new_tokens"], "a row stopped early"
                out[f"{mode}-b{batch}"] = batch * spec["new_tokens"] / wall
    return {"tokens_per_s": out, "attention": model.config._attn_implementation, **threads}


# ----------------------------------------------------------------- the profile (--profile): parts of one step


def timed(fn, reps: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` (which must block until its work is done) over ``reps`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def worker_profile_tf(spec: dict) -> dict:
    """ms per step of gpt2ja's parts: model.gpt2's model and loss, model.optim's AdamW, as the trainer builds them.

    Each part is one ``tf.function`` (``jit_compile`` off, and on for the whole step), fed the same
    ``(B, T)`` batch from memory; the data pipeline is the trainer's (``gpt2ja.model.data_order.train_dataset``) alone.
    """
    threads = set_tf_threads(spec["cores"])
    import keras
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})  # as trainer.start_runtime
    from gpt2ja.model import gpt2
    from gpt2ja.model.data_order import train_dataset
    from gpt2ja.model.optim import make_optimizer
    from gpt2ja.model.presets import ModelConfig
    from gpt2ja.model.train import TrainConfig

    b, t, reps = spec["micro_batch"], spec["seq_len"], spec["reps"]
    keras.utils.set_random_seed(0)
    cfg = ModelConfig.from_preset(spec["preset"], vocab_size=spec["vocab"], context_length=t)
    tcfg = TrainConfig(
        data=spec["data"],
        run="/nonexistent",
        preset=spec["preset"],
        steps=1000,
        warmup_steps=0,
        batch_tokens=b * t,
        micro_batch=b,
    )
    lm = gpt2.build_model(cfg)
    opt = make_optimizer(tcfg, lm)
    variables = lm.trainable_variables
    ds = train_dataset(spec["data"], global_batch=b, seed=0)
    it = iter(ds)
    x, y = next(it)
    expected = float(b * t)

    def grads_of(x, y):
        with tf.GradientTape() as tape:
            total, _ = gpt2.causal_lm_loss_sum(gpt2.logits(lm, x, training=True), y)
            objective = total / expected
        return [tf.convert_to_tensor(g) for g in tape.gradient(objective, variables)], total

    def step_fn(x, y):  # trainer.make_train_step's replica_step with accum = 1, one replica
        grads, total = grads_of(x, y)
        norm = tf.linalg.global_norm(grads)
        grads, _ = tf.clip_by_global_norm(grads, tcfg.clip_norm, use_norm=norm)
        opt.apply(grads, variables)
        return total

    fwd = tf.function(lambda x: tf.reduce_sum(gpt2.logits(lm, x, training=True)[:, -1]))
    fwd_loss = tf.function(lambda x, y: gpt2.causal_lm_loss_sum(gpt2.logits(lm, x, training=True), y)[0])
    fwd_bwd = tf.function(lambda x, y: tf.linalg.global_norm(grads_of(x, y)[0]))
    hidden = tf.function(lambda x: lm.backbone({"token_ids": x, "padding_mask": tf.ones_like(x)}, training=True))
    h = hidden(x)
    emb = gpt2.token_embedding(lm)

    @tf.function
    def head_loss(h, y):  # the tied LM head h·Eᵀ + softmax cross-entropy over the vocabulary, forward and backward
        with tf.GradientTape() as tape:
            tape.watch(h)
            scores = tf.matmul(h, emb, transpose_b=True)  # (B, T, V)
            total = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=scores))
        dh, de = tape.gradient(total, [h, emb])
        return tf.reduce_sum(dh) + tf.reduce_sum(tf.convert_to_tensor(de))

    @tf.function
    def softmax_only(scores, y):  # cross-entropy forward + backward on given logits
        with tf.GradientTape() as tape:
            tape.watch(scores)
            total = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=scores))
        return tf.reduce_sum(tape.gradient(total, scores)[:, -1])

    scores = tf.random.normal([b, t, cfg.padded_vocab_size])
    fixed_grads = [tf.random.normal(v.shape) * 1e-3 for v in variables]
    apply_fn = tf.function(lambda: opt.apply(fixed_grads, variables))
    step = tf.function(step_fn)
    step_xla = tf.function(step_fn, jit_compile=True)

    def data_batch():
        a, _ = next(it)
        a.numpy()

    parts = {
        "data pipeline (train_dataset, one batch)": data_batch,
        "forward (logits)": lambda: fwd(x).numpy(),
        "forward + loss": lambda: fwd_loss(x, y).numpy(),
        "forward + loss + backward": lambda: fwd_bwd(x, y).numpy(),
        "LM head + softmax cross-entropy, fwd+bwd": lambda: head_loss(h, y).numpy(),
        "softmax cross-entropy alone, fwd+bwd": lambda: softmax_only(scores, y).numpy(),
        "optimizer apply (AdamW)": lambda: (apply_fn(), opt.iterations.numpy()),
        "whole step, tf.function": lambda: step(x, y).numpy(),
    }
    out = {name: timed(fn, reps) * 1e3 for name, fn in parts.items()}
    t0 = time.perf_counter()
    step_xla(x, y).numpy()
    out["whole step, XLA compile (first call)"] = (time.perf_counter() - t0) * 1e3
    out["whole step, tf.function(jit_compile=True)"] = timed(lambda: step_xla(x, y).numpy(), reps) * 1e3
    return {"ms": out, **threads}


def worker_profile_torch(spec: dict) -> dict:
    """ms per step of the PyTorch peer's parts (the model and step of worker_train_torch), eager."""
    threads = set_torch_threads(spec["cores"])
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model, cfg = torch_model(spec["preset"], spec["vocab"], spec["seq_len"])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    b, t, v, reps = spec["micro_batch"], spec["seq_len"], cfg.vocab_size, spec["reps"]
    data = torch.randint(0, v, (b, t + 1))
    x, y = data[:, :-1], data[:, 1:]

    def loss_of():
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def fwd():
        with torch.no_grad():
            model(input_ids=x).logits[:, -1].sum().item()

    def fwd_loss():
        with torch.no_grad():
            loss_of().item()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss_of().backward()

    h = model.transformer(input_ids=x).last_hidden_state.detach().requires_grad_(True)
    emb = model.transformer.wte.weight

    def head_loss():
        scores = h @ emb.t()
        F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1), reduction="sum").backward()
        h.grad = None
        emb.grad = None

    scores = torch.randn(b, t, cfg.padded_vocab_size, requires_grad=True)

    def softmax_only():
        F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1), reduction="sum").backward()
        scores.grad = None

    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3

    def apply():
        opt.step()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        loss.item()

    parts = {
        "forward (logits)": fwd,
        "forward + loss": fwd_loss,
        "forward + loss + backward": fwd_bwd,
        "LM head + softmax cross-entropy, fwd+bwd": head_loss,
        "softmax cross-entropy alone, fwd+bwd": softmax_only,
        "optimizer apply (AdamW)": apply,
        "whole step, eager": step,
    }
    return {"ms": {name: timed(fn, reps) * 1e3 for name, fn in parts.items()}, **threads}


def profile(args, data: str, vocab: int, seq_len: int) -> dict:
    """The parts of one training step on both sides, in ms (median of ``--profile-reps``), one process each."""
    found = {}
    for preset in args.profile:
        spec = {
            "cores": args.cores,
            "preset": preset,
            "micro_batch": args.micro_batch,
            "seq_len": seq_len,
            "vocab": vocab,
            "data": data,
            "reps": args.profile_reps,
        }
        tf_side = run_worker("profile-tf", spec, args.timeout)
        torch_side = run_worker("profile-torch", spec, args.timeout)
        found[preset] = {"gpt2ja": tf_side, "torch": torch_side}
        print(
            f"profile {preset}: {args.micro_batch} × {seq_len} tokens per step, vocabulary {vocab:,}, fp32; "
            f"ms per call, median of {args.profile_reps} after 2 warm-up calls"
        )
        print("| part | gpt2ja (TensorFlow) ms | PyTorch eager ms |")
        print("| --- | --- | --- |")
        ours, theirs = tf_side.get("ms", {}), torch_side.get("ms", {})
        for name in list(ours) + [n for n in theirs if n not in ours]:
            a, c = ours.get(name), theirs.get(name)
            print(f"| {name} | {f'{a:,.1f}' if a is not None else '–'} | {f'{c:,.1f}' if c is not None else '–'} |")
        for side, got in (("gpt2ja", tf_side), ("torch", torch_side)):
            if "error" in got:
                print(f"{side}: failed: {got['error']}")
    return found


WORKERS = {
    "prepare": worker_prepare,
    "train-tf": worker_train_tf,
    "train-jax": worker_train_jax,
    "ceiling": worker_ceiling,
    "train-torch": worker_train_torch,
    "gen-tf": worker_gen_tf,
    "gen-hf": worker_gen_hf,
    "profile-tf": worker_profile_tf,
    "profile-torch": worker_profile_torch,
}


def run_worker(kind: str, spec: dict, timeout: float) -> dict:
    """One measurement in a fresh process: its JSON result, or ``{"error": one line}``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    jax_side = kind == "train-jax" or (kind == "ceiling" and spec.get("framework") == "jax")
    env["KERAS_BACKEND"] = "jax" if jax_side else "tensorflow"
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:300]}"}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_s"] = round(time.perf_counter() - t0, 1)
    return result


# ----------------------------------------------------------------- the driver


def machine(cores: int) -> str:
    """The machine lines of :func:`ceiling.machine_lines` (date, CPU model and SIMD flags, OS, versions), threads."""
    import ceiling

    return "; ".join(ceiling.machine_lines()) + (
        f"; threads: TensorFlow intra-op = inter-op = {cores}, torch "
        f"num_threads = interop = {cores}, JAX: XLA's CPU default (all "
        "cores)"
    )


def ceilings(args, say) -> dict[str, float | None]:
    """``{framework: fp32 matmul FLOP/s}``, each measured in its own process with the trainers' threads."""
    out = {}
    for fw in ("tf", "jax", "torch"):
        got = run_worker("ceiling", {"framework": fw, "cores": args.cores, "size": CEILING_SIZE}, args.timeout)
        out[fw] = got.get("flops")
        say(
            f"  {FRAMEWORK_NAME[fw]} fp32 matmul {CEILING_SIZE}²: "
            + (f"{out[fw] / 1e9:,.1f} GFLOP/s" if out[fw] else f"failed ({got.get('error')})")
        )
    return out


def summary(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def cell(s: dict | None, fmt: str = ",.0f") -> str:
    if not s:
        return "failed"
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def bench_training(args, data: str, vocab: int, seq_len: int, say) -> dict:
    kinds = [k for k in TRAIN_KINDS if (args.torch_compile or k != "torch-compile") and k in args.contenders]
    results: dict = {}
    for preset in args.presets:
        got: dict[str, list] = {k: [] for k in kinds}
        errors: dict[str, str] = {}
        extras: dict[str, dict] = {}
        for r in range(args.rounds):
            for kind in kinds:
                if kind in errors:
                    continue  # failed once (e.g. torch.compile): not retried every round
                spec = {
                    "cores": args.cores,
                    "preset": preset,
                    "steps": args.steps,
                    "micro_batch": args.micro_batch,
                    "data": data,
                    "vocab": vocab,
                    "seq_len": seq_len,
                    "xla": args.xla,
                    "warmup": args.warmup,
                    "compile": kind == "torch-compile",
                }
                out = run_worker(TRAIN_WORKER[kind], spec, args.timeout)
                if "error" in out:
                    errors[kind] = out["error"]
                    say(f"  {preset} round {r + 1} {kind}: FAILED {out['error']}")
                    continue
                got[kind].append(out["tokens_per_s"])
                extras[kind] = {k: v for k, v in out.items() if k != "tokens_per_s"}
                say(
                    f"  {preset} round {r + 1} {kind}: {out['tokens_per_s']:,.0f} tokens/s "
                    f"({out['process_s']:.0f} s in the process"
                    + ", steps "
                    + " ".join(f"{x:,.0f}" for x in out["step_rates"])
                    + (
                        f"; by this script's clock {out['clock_tokens_per_s']:,.0f}"
                        if out.get("clock_tokens_per_s")
                        else ""
                    )
                    + ")"
                )
        stats = {k: summary(v) for k, v in got.items() if v}
        torch_best = max((stats[k]["median"] for k in ("torch-eager", "torch-compile") if k in stats), default=None)
        ratio = {k: stats[k]["median"] / torch_best for k in ("gpt2ja-tf", "gpt2ja-jax") if k in stats and torch_best}
        results[preset] = {"tokens_per_s": stats, "errors": errors, "workers": extras, "ratio_vs_best_torch": ratio}
    return results


def bench_generation(args, exports: dict, say) -> dict:
    results: dict = {}
    for preset in args.gen_presets:
        got: dict[str, dict[str, list]] = {side: {} for side in GEN_SIDES}
        errors: dict[str, str] = {}
        for r in range(args.rounds):
            for side in GEN_SIDES:
                if side in errors:
                    continue
                spec = {
                    "cores": args.cores,
                    "run": exports[preset]["run"],
                    "export": exports[preset]["export"],
                    "batches": args.gen_batches,
                    "new_tokens": args.new_tokens,
                    "prompt_len": args.prompt_len,
                    "xla": args.xla,
                }
                out = run_worker("gen-tf" if side == "gpt2ja" else "gen-hf", spec, args.timeout)
                if "error" in out:
                    errors[side] = out["error"]
                    say(f"  {preset} round {r + 1} {side}: FAILED {out['error']}")
                    continue
                for key, rate in out["tokens_per_s"].items():
                    got[side].setdefault(key, []).append(rate)
                say(
                    f"  {preset} round {r + 1} {side}: "
                    + ", ".join(f"{k} {v:,.1f}" for k, v in out["tokens_per_s"].items())
                    + " tokens/s"
                )
        results[preset] = {
            "tokens_per_s": {side: {k: summary(v) for k, v in rows.items()} for side, rows in got.items()},
            "errors": errors,
        }
    return results


def print_training(training: dict, vocab: int, seq_len: int, before: dict, after: dict) -> None:
    """One row per contender: tokens/s, the model GFLOP/s it implies, its framework's measured ceiling.

    A figure above the highest ceiling measured in the run (any framework, before or after) is a benchmark
    bug and is printed as one, in place of the figure.
    """
    import ceiling

    from gpt2ja.model.presets import ModelConfig, param_count

    best = max((v for d in (before, after) for v in d.values() if v), default=None)
    print(
        "| preset | parameters | contender | tokens/s | model GFLOP/s | framework's fp32 matmul GFLOP/s "
        "(before / after) | model ÷ best matmul of the run |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for preset, t in training.items():
        cfg = ModelConfig.from_preset(preset, vocab_size=vocab, context_length=seq_len)
        n = param_count(cfg) - cfg.context_length * cfg.hidden_dim
        fpt = ceiling.flops_per_token(n, cfg.num_layers, cfg.hidden_dim, seq_len)
        for kind in TRAIN_KINDS:
            s = t["tokens_per_s"].get(kind)
            if s is None:
                if kind in t["errors"]:
                    print(
                        f"| {preset} | {param_count(cfg) / 1e6:,.1f} M | {kind} | failed: {t['errors'][kind]} | | | |"
                    )
                continue
            fw = FRAMEWORK[kind]
            own = [x for x in (before.get(fw), after.get(fw)) if x]
            ceil_cell = " / ".join(f"{x / 1e9:,.1f}" if x else "–" for x in (before.get(fw), after.get(fw)))
            flops = s["median"] * fpt
            bug = ceiling.check(f"{kind} at {s['median']:,.0f} tokens/s", flops, best)
            if bug:
                print(f"| {preset} | {param_count(cfg) / 1e6:,.1f} M | {kind} | {bug} | | {ceil_cell} | |")
                continue
            mark = " (above its framework's matmul)" if own and flops > max(own) else ""
            share = f"{flops / best:.2f}" if best else "–"
            print(
                f"| {preset} | {param_count(cfg) / 1e6:,.1f} M | {kind} | {cell(s)} | {flops / 1e9:,.1f}{mark} | "
                f"{ceil_cell} | {share} |"
            )
        for kind, ratio in t["ratio_vs_best_torch"].items():
            print(f"{preset}: {kind} ÷ faster PyTorch = {ratio:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help="a shards artifact (gpt2ja shards); default: synthetic, under --work")
    ap.add_argument("--work", default="/tmp/gpt2ja-peer-bench", help="where the synthetic data and runs are kept")
    ap.add_argument("--vocab", type=int, default=8000, help="sentencepiece ids of the synthetic data")
    ap.add_argument("--seq-len", type=int, default=256, help="sequence length of the synthetic shards")
    ap.add_argument("--presets", default="tiny,mini", help="training presets ('' = no training figures)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="first steps not counted (tracing, compiling, first touches)")
    ap.add_argument("--micro-batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
    ap.add_argument(
        "--contenders",
        default=",".join(TRAIN_KINDS),
        help=f"training contenders, comma-separated (default: all of {', '.join(TRAIN_KINDS)})",
    )
    ap.add_argument(
        "--xla",
        action="store_true",
        help="gpt2ja's step and every decoder compiled with XLA "
        "(off = gpt2ja's defaults: XLA for greedy decoding only)",
    )
    ap.add_argument("--gen-presets", default="tiny", help="generation presets ('' = no generation figures)")
    ap.add_argument("--gen-batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads of each framework")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one measurement may take")
    ap.add_argument("--quick", action="store_true", help="tiny, 1 round, 4 steps, batch 1, 50 new tokens")
    ap.add_argument("--profile", default="", help="presets whose training step is timed part by part ('' = none)")
    ap.add_argument("--profile-reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()

    if args.worker:
        result = WORKERS[args.worker](json.loads(args.spec))
        print("RESULT " + json.dumps(result), flush=True)
        return
    if not 0 <= args.warmup < args.steps:
        ap.error(f"--warmup {args.warmup} must leave at least one of the {args.steps} steps")
    if args.quick:
        args.presets, args.rounds, args.steps, args.gen_batches, args.new_tokens = "tiny", 1, 4, "1", 50
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contenders if c not in TRAIN_KINDS]
    if unknown:
        ap.error(f"unknown contender {unknown[0]}; choose among {', '.join(TRAIN_KINDS)}")
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.gen_presets = [p.strip() for p in args.gen_presets.split(",") if p.strip()]
    args.gen_batches = [int(b) for b in args.gen_batches.split(",") if b.strip()]
    args.profile = [p.strip() for p in args.profile.split(",") if p.strip()]

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]
    os.makedirs(args.work, exist_ok=True)
    say(f"preparing data{' and runs for generation' if args.gen_presets else ''} under {args.work} …")
    prep = run_worker(
        "prepare",
        {
            "cores": args.cores,
            "work": args.work,
            "data": args.data,
            "vocab": args.vocab,
            "seq_len": args.seq_len,
            "gen_presets": args.gen_presets,
        },
        args.timeout,
    )
    if "error" in prep:
        sys.exit(f"peer_bench: preparing the data failed ({prep['error']})")
    from gpt2ja.infra import storage

    manifest = storage.read_manifest(prep["data"])
    vocab, seq_len = manifest["vocab_size"], manifest["seq_len"]
    ceil_before, ceil_after = {}, {}
    if args.presets:
        say("fp32 matmul ceilings before training:")
        ceil_before = ceilings(args, say)
    training = bench_training(args, prep["data"], vocab, seq_len, say) if args.presets else {}
    if args.presets:
        say("fp32 matmul ceilings after training:")
        ceil_after = ceilings(args, say)
    generation = bench_generation(args, prep["exports"], say) if args.gen_presets else {}
    load_after = os.getloadavg()[0]
    profiled = profile(args, prep["data"], vocab, seq_len) if args.profile else {}

    print(f"machine: {machine(args.cores)}")
    print(f"load average before: {load_before:.2f}, after: {load_after:.2f}")
    print(f"data: {prep['data']} (vocabulary {vocab:,}, seq_len {seq_len})")
    if training:
        attention = next(
            (w.get("attention") for t in training.values() for k, w in t["workers"].items() if w.get("attention")), "?"
        )
        print(
            f"training: fp32, {args.micro_batch} sequences × {seq_len} per step, AdamW, clip 1.0, {args.steps} "
            f"steps per measurement (median tokens/s of steps {args.warmup + 1}–{args.steps}), {args.rounds} "
            "interleaved rounds: "
            f"median (min–max); gpt2ja-tf XLA {'on' if args.xla else 'off'}, gpt2ja-jax XLA (jit) always; PyTorch "
            f"attention {attention}; model FLOPs per token 6·N + 12·L·H·T (PaLM); each framework's fp32 matmul "
            f"{CEILING_SIZE}² measured before and after the training rounds (GFLOP/s, before / after)"
        )
        print_training(training, vocab, seq_len, ceil_before, ceil_after)
    if generation:
        DEFAULT_XLA = "as by default (on; off for one row of a 20 M+ model on the CPU)"
        print(
            f"generation: {args.new_tokens} new tokens on every row, prompt of {args.prompt_len} ids, KV cache on "
            f"both sides, gpt2ja XLA {'on' if args.xla else DEFAULT_XLA}; "
            f"tokens/s (all rows), {args.rounds} interleaved "
            f"rounds: median (min–max)"
        )
        print("| preset | batch | decoding | gpt2ja tokens/s | transformers tokens/s | gpt2ja ÷ transformers |")
        print("| --- | --- | --- | --- | --- | --- |")
        for preset, g in generation.items():
            for batch in args.gen_batches:
                for mode in GEN_MODES:
                    key = f"{mode}-b{batch}"
                    ours, theirs = (g["tokens_per_s"][side].get(key) for side in GEN_SIDES)
                    ratio = f"{ours['median'] / theirs['median']:.2f}" if ours and theirs else "–"
                    label = "greedy" if mode == "greedy" else "top-p 0.99"
                    print(f"| {preset} | {batch} | {label} | {cell(ours, ',.1f')} | {cell(theirs, ',.1f')} | {ratio} |")
            for side, err in g["errors"].items():
                print(f"{preset} {side}: failed: {err}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine(args.cores),
                    "load_before": load_before,
                    "load_after": load_after,
                    "data": prep["data"],
                    "vocab_size": vocab,
                    "seq_len": seq_len,
                    "micro_batch": args.micro_batch,
                    "steps": args.steps,
                    "rounds": args.rounds,
                    "xla": args.xla,
                    "new_tokens": args.new_tokens,
                    "prompt_len": args.prompt_len,
                    "training": training,
                    "generation": generation,
                    "profile": profiled,
                    "ceilings": {"before": ceil_before, "after": ceil_after},
                },
                indent=2,
            )
            + "\n"
        )
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()

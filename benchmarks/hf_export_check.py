"""A Hugging Face export, run by transformers alone (on a GPU where there is one): does it score and sample as gpt2ja?

What a user of the export does, on whatever machine they have: ``AutoTokenizer``
and ``AutoModelForCausalLM`` from the export's folder, then scoring and
``generate``. The script checks and measures that path, with no TensorFlow:

1. the machine, torch and transformers versions and the device;
2. bits per character of ``--text`` scored by the export, with gpt2ja's own
   sliding windows (``gpt2ja.model.evaluate.windows``: ``EOS text``, context = the
   model's positions, stride half of it, padding ids masked), next to
   ``--expect-bpc`` (the ``gpt2ja eval`` figure of the same run and text); the
   tokenizer's ids are gpt2ja's (tested in tests/test_export.py), so the two
   figures differ only by floating-point arithmetic;
3. ``generate`` tokens/s with the export's own ``generation_config.json``
   (gpt2ja generate's sampling defaults) and greedy, batch 1 and 8,
   ``max_new_tokens`` new tokens on every row (``min_new_tokens`` the same),
   median of ``--reps`` calls after one warm-up, and one sample.

It writes a Markdown report (``--report``). Usage::

    .venv/bin/python benchmarks/hf_export_check.py --export data/export/tiny-sp8k-final-hf \\
        --text data/studies/recipe/eval-texts/heldout/validation --expect-bpc 4.3489 --device cpu

On the device machine, which has torch and transformers but no gpt2ja
environment, carry pydantic's wheels (gpt2ja.model.evaluate's imports) and run it
with that machine's ``python3``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def score(model, tok, texts: list[str], *, batch: int, device) -> dict:
    """Bits per character of ``texts`` under the export, scored as ``gpt2ja eval`` scores them."""
    import numpy as np
    import torch

    from gpt2ja.model.evaluate import LN2, windows

    context = int(model.config.n_positions)
    stride = max(1, context // 2)
    padding = model.generation_config.suppress_tokens or []  # the export names its padding rows there
    real = min(padding) if padding else int(model.config.vocab_size)
    wins = []
    for i, text in enumerate(texts):
        ids = tok(text)["input_ids"]  # the export's tokenizer puts EOS first, as training did
        if ids[:1] != [tok.eos_token_id]:
            raise SystemExit(f"error: the export's tokenizer did not start {text[:20]!r} with <|endoftext|>")
        wins.extend(windows(ids, context, stride, i))
    nats, tokens = 0.0, 0
    with torch.inference_mode():
        for b in range(0, len(wins), batch):
            chunk = wins[b : b + batch]
            inputs = np.zeros((len(chunk), context), np.int64)
            targets = np.full((len(chunk), context), -1, np.int64)
            for row, w in enumerate(chunk):
                inputs[row, : len(w.inputs)] = w.inputs
                targets[row, : len(w.targets)] = w.targets
            t = torch.as_tensor(targets, device=device)
            logits = model(torch.as_tensor(inputs, device=device)).logits.float()
            logits[..., real:] = float("-inf")
            logp = torch.log_softmax(logits, dim=-1).gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nats -= float(torch.where(t >= 0, logp, torch.zeros_like(logp)).double().sum())
            tokens += int((t >= 0).sum())
    chars = sum(len(t) for t in texts)
    return {
        "characters": chars,
        "tokens": tokens,
        "windows": len(wins),
        "context": context,
        "stride": stride,
        "bits_per_character": nats / LN2 / chars,
        "token_perplexity": math.exp(nats / tokens),
    }


def generation_speed(model, tok, prompt: str, *, batch: int, greedy: bool, reps: int, device) -> tuple[float, str]:
    """Median tokens/s of ``generate`` (one warm-up call first) and the first row of the last call."""
    import torch

    new = int(model.generation_config.max_new_tokens)
    room = int(model.config.n_positions) - new  # the prompt is cut from the left to fit (the model card's advice)
    enc = tok([prompt] * batch, return_tensors="pt", truncation=True, max_length=room).to(device)
    options = {"max_new_tokens": new, "min_new_tokens": new}
    if greedy:
        options["do_sample"] = False
    rates, out = [], None
    for rep in range(reps + 1):
        torch.manual_seed(rep)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if rep:
            rates.append(batch * new / (time.perf_counter() - started))
    return statistics.median(rates), tok.decode(out[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", required=True, help="a gpt2ja export folder (gpt2ja export hf)")
    ap.add_argument("--text", required=True, help="a .txt file or a clean-corpus split (as gpt2ja eval takes)")
    ap.add_argument("--expect-bpc", type=float, help="gpt2ja eval's bits/char of the same run and text")
    ap.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    ap.add_argument("--batch", type=int, default=32, help="scoring windows per forward pass")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", default="ある日の暮方の事である。")
    ap.add_argument("--report", default="benchmarks/reports/hf-export-check.md")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpt2ja.model.evaluate import read_texts

    if not Path(args.export, "config.json").is_file():
        print(
            f"error: {args.export} is not a Hugging Face export (no config.json); make one with gpt2ja export hf",
            file=sys.stderr,
        )
        return 2
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    lines = [
        "# Hugging Face export check",
        "",
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} · {platform.platform()} · "
        f"Python {platform.python_version()} · torch {torch.__version__} · transformers "
        f"{transformers.__version__} · {os.cpu_count()} CPUs",
        "",
    ]
    if device.type == "cuda":
        lines += [
            f"Device: {torch.cuda.get_device_name(device)} (fp32 weights, TF32 matmuls "
            f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})",
            "",
        ]
    else:
        lines += [f"Device: CPU, {torch.get_num_threads()} threads", ""]
    tok = AutoTokenizer.from_pretrained(args.export)
    model = AutoModelForCausalLM.from_pretrained(args.export).to(device).eval()
    conf = model.generation_config
    lines += [
        f"Export `{args.export}`: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(tok):,} token ids, context {model.config.n_positions}; generation_config: temperature "
        f"{conf.temperature}, top-k {conf.top_k}, top-p {conf.top_p}, {conf.max_new_tokens} new tokens.",
        "",
    ]

    texts = read_texts([args.text])
    started = time.perf_counter()
    got = score(model, tok, texts, batch=args.batch, device=device)
    seconds = time.perf_counter() - started
    lines += [
        "## Bits per character",
        "",
        f"{got['characters']:,} characters of `{args.text}` ({len(texts)} texts, {got['tokens']:,} tokens, "
        f"{got['windows']:,} windows of {got['context']} with stride {got['stride']}), "
        f"{seconds:.1f} s:",
        "",
        "| | bits/char | token perplexity |",
        "| --- | --- | --- |",
        f"| the export, transformers on {device.type} | {got['bits_per_character']:.4f} | "
        f"{got['token_perplexity']:.2f} |",
    ]
    if args.expect_bpc is not None:
        diff = got["bits_per_character"] - args.expect_bpc
        lines += [
            f"| gpt2ja eval (TensorFlow) | {args.expect_bpc:.4f} | |",
            "",
            f"Difference {diff:+.2e} bits/char ({'agrees' if abs(diff) < 1e-3 else 'DISAGREES'}: "
            "within 1e-3 is floating-point order).",
        ]
    lines += ["", "## generate", "", "| decoding | batch | tokens/s (median) |", "| --- | --- | --- |"]
    sample = ""
    for greedy in (False, True):
        for batch in (1, 8):
            rate, text = generation_speed(
                model, tok, args.prompt, batch=batch, greedy=greedy, reps=args.reps, device=device
            )
            label = "greedy" if greedy else "the export's generation_config"
            lines.append(f"| {label} | {batch} | {rate:,.0f} |")
            if not greedy and batch == 1:
                sample = text
    lines += ["", f"A sample with the export's generation_config (seed {args.reps}):", "", "```", sample, "```", ""]
    report = "\n".join(lines)
    print(report)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(report, encoding="utf-8")
    if args.expect_bpc is not None and abs(got["bits_per_character"] - args.expect_bpc) >= 1e-3:
        print(
            f"error: the export scores {got['bits_per_character']:.4f} bits/char where gpt2ja eval gave "
            f"{args.expect_bpc:.4f}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

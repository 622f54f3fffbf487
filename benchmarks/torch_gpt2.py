"""A PyTorch GPT-2 trained the way its users write one: the baseline gpt2ja's JAX step is measured against.

Written for this project (not copied from anywhere), in the style most PyTorch
GPT-2 training code follows (nanoGPT's, Karpathy's llm.c's PyTorch reference):

* pre-LayerNorm blocks, learned positions, GELU (tanh), a tied LM head
  (``lm_head.weight is wte.weight``), biases, dropout; weights N(0, 0.02) with
  the residual projections scaled by 1/√(2L) (GPT-2's initialisation);
* attention by ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``
  (FlashAttention on a recent GPU);
* ``torch.compile`` of the model; bf16 through ``torch.autocast`` (fp32
  master weights), TF32 allowed for what stays fp32;
* AdamW with ``fused=True``, weight decay on the 2-D weights only, the global
  gradient norm clipped to 1.0, ``zero_grad(set_to_none=True)``;
* micro-batches accumulated in one optimizer step.

The shape is gpt2ja's preset (``gpt2ja.model.presets``), so the same parameter count
and model FLOPs per token (PaLM's ``6·N + 12·L·H·T``, :func:`ceiling.flops_per_token`)
as gpt2ja's model of that preset. The data are random ids drawn once on the device
(the throughput of a step does not depend on them).

Usage (one GPU; prints one line of JSON after the human lines)::

    python benchmarks/torch_gpt2.py --preset small --vocab 50304 --seq-len 1024 --micro-batch 16 --accum 2 \\
        --steps 30 --warmup 10 --dtype bf16
    .venv/bin/python benchmarks/torch_gpt2.py --preset tiny --vocab 8000 --seq-len 256 --micro-batch 16 \\
        --steps 5 --warmup 2 --dtype fp32 --no-compile        # CPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


@dataclass(frozen=True)
class Shape:
    vocab: int  # rows of the token embedding (already padded)
    seq_len: int  # positions
    layers: int
    heads: int
    width: int  # n_embd
    mlp: int  # 4 × width in GPT-2
    dropout: float


class SelfAttention(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.heads, self.dropout = s.heads, s.dropout
        self.qkv = nn.Linear(s.width, 3 * s.width)
        self.out = nn.Linear(s.width, s.width)
        self.out.residual = True
        self.drop = nn.Dropout(s.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # 3 × (B, T, C)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.out(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(s.width), nn.LayerNorm(s.width)
        self.attn = SelfAttention(s)
        self.fc, self.proj = nn.Linear(s.width, s.mlp), nn.Linear(s.mlp, s.width)
        self.proj.residual = True
        self.drop = nn.Dropout(s.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh")))


class GPT2(nn.Module):
    """GPT-2 with a tied output layer; ``forward(ids, targets)`` returns the mean cross-entropy."""

    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(s.vocab, s.width), nn.Embedding(s.seq_len, s.width)
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.layers))
        self.ln_f = nn.LayerNorm(s.width)
        self.lm_head = nn.Linear(s.width, s.vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * s.layers) if getattr(m, "residual", False) else 0.02
                nn.init.normal_(m.weight, 0.0, std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.drop(self.wte(ids) + self.wpe(torch.arange(t, device=ids.device)))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def shape_of(preset: str, vocab: int, seq_len: int, dropout: float | None) -> Shape:
    from gpt2ja.model.presets import ModelConfig

    cfg = ModelConfig.from_preset(preset, vocab_size=vocab, context_length=seq_len, dropout=dropout)
    return Shape(
        vocab=cfg.padded_vocab_size,
        seq_len=seq_len,
        layers=cfg.num_layers,
        heads=cfg.num_heads,
        width=cfg.hidden_dim,
        mlp=cfg.intermediate_dim,
        dropout=cfg.dropout,
    )


def optimizer(model: nn.Module, device: str, lr: float = 6e-4, weight_decay: float = 0.1) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and p is not model.wpe.weight and p is not model.wte.weight]
    rest = [p for p in params if not any(p is q for q in decay)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=device == "cuda" or None,
    )


def bench(
    preset: str,
    vocab: int,
    seq_len: int,
    micro_batch: int,
    accum: int,
    steps: int,
    warmup: int,
    dtype: str,
    compile_: bool,
    dropout: float | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict:
    """Train ``steps`` optimizer steps on random ids; tokens/s over the steps after ``warmup``, timed as one block."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    s = shape_of(preset, vocab, seq_len, dropout)
    model = GPT2(s).to(dev)
    opt = optimizer(model, dev)
    step_model = torch.compile(model) if compile_ else model
    amp = torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dtype == "bf16")
    g = torch.Generator(device=dev).manual_seed(0)
    data = torch.randint(0, s.vocab, (accum, micro_batch, seq_len + 1), device=dev, generator=g)

    def one_step() -> torch.Tensor:
        for i in range(accum):
            x, y = data[i, :, :-1], data[i, :, 1:]
            with amp:
                loss = step_model(x, y) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    first = []
    for _ in range(warmup):  # the first compiles
        t0 = time.perf_counter()
        float(one_step().detach())  # waits for the step (and synchronises CUDA)
        first.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(steps - warmup):
        loss = one_step()
    final = float(loss.detach())  # waits for every step queued: one synchronisation, as a trainer logging rarely
    wall = time.perf_counter() - t0
    tokens = accum * micro_batch * seq_len
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()  # tied head counted once
    from ceiling import flops_per_token

    return {
        "framework": "torch",
        "torch": torch.__version__,
        "device": dev,
        "device_name": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "preset": preset,
        "vocab_rows": s.vocab,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "accum": accum,
        "tokens_per_step": tokens,
        "dtype": dtype,
        "compile": compile_,
        "dropout": s.dropout,
        "attention": "F.scaled_dot_product_attention(is_causal=True)",
        "fused_adamw": dev == "cuda",
        "parameters": n + model.wpe.weight.numel(),
        "flops_per_token": flops_per_token(n, s.layers, s.width, seq_len),
        "warmup_step_s": first,
        "measured_steps": steps - warmup,
        "measured_s": wall,
        "tokens_per_s": (steps - warmup) * tokens / wall,
        "loss": final * accum,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="first steps not counted (compiling)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = ap.parse_args()
    if not 0 < args.warmup < args.steps:
        ap.error("--warmup must be at least 1 (the compile) and leave a step to measure")
    import ceiling

    for line in ceiling.machine_lines(("numpy", "torch", "triton")):
        print(line)
    out = bench(
        args.preset,
        args.vocab,
        args.seq_len,
        args.micro_batch,
        args.accum,
        args.steps,
        args.warmup,
        args.dtype,
        args.compile,
        args.dropout,
        threads=args.threads,
    )
    print(
        f"torch {out['torch']} on {out['device_name']}: {args.preset}, {out['parameters']:,} parameters, "
        f"{args.accum} × {args.micro_batch} × {args.seq_len} tokens a step, {args.dtype}, "
        f"compile {'on' if args.compile else 'off'}: {out['tokens_per_s']:,.0f} tokens/s "
        f"(steps {args.warmup + 1}–{args.steps}; first step {out['warmup_step_s'][0]:.1f} s)"
    )
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

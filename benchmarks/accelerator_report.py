"""The accelerator check's verdicts in numbers: JAX against PyTorch (step 3), a resumed run against an unbroken one (4).

``compare``: the JSON of ``model_bench.py --backend jax`` and of ``torch_gpt2.py``
(same shape, same batch), with the matmul ceilings ``ceiling.py --json`` measured
in the same call, as one Markdown table: tokens/s, model TFLOP/s (PaLM's
``6·N + 12·L·H·T`` per token), MFU against the datasheet peak and against the
framework's own measured ceiling. A figure above its measured ceiling is
printed as a benchmark bug and fails the step.

``resume``: the newest checkpoint of each run (``gpt2ja.model.checkpoint``'s npz)
must be at ``--steps``; the weights and AdamW state are compared array by
array (``--bitwise``: equal bit for bit, as on the CPU; otherwise the max abs
difference is reported, as on a GPU, where XLA's reductions need not be
deterministic), and the killed run's ``metrics.jsonl`` must log every step
once, in order, with each step's loss beside the unbroken run's.

Usage::

    python benchmarks/accelerator_report.py compare --jax jax.json --torch torch.json \\
        --ceiling-jax cj.json --ceiling-torch ct.json
    python benchmarks/accelerator_report.py resume --killed RUN_A --unbroken RUN_B --steps 24 [--bitwise]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _json(path: str) -> dict:
    text = Path(path).read_text().strip().splitlines()
    return json.loads(text[-1]) if text else {}


def compare(args) -> int:
    import ceiling

    jax_run, torch_run = _json(args.jax), _json(args.torch)
    ceil = {
        "jax": (_json(args.ceiling_jax).get("flops") or {}).get("jax"),
        "torch": (_json(args.ceiling_torch).get("flops") or {}).get("torch"),
    }
    row = jax_run["rows"][0]
    device = jax_run.get("device") or torch_run.get("device_name") or "?"
    peak, source = (
        (jax_run.get("peak_tflops"), jax_run.get("peak_source"))
        if jax_run.get("peak_tflops")
        else (ceiling.datasheet_peak(device) or (None, ""))
    )
    sides = [
        ("gpt2ja, JAX (gpt2ja.model.trainer_jax.make_step)", "jax", row["tokens_per_s"], row["flops_per_token"]),
        (
            "PyTorch (benchmarks/torch_gpt2.py" + (", torch.compile" if torch_run.get("compile") else "") + ")",
            "torch",
            torch_run["tokens_per_s"],
            torch_run["flops_per_token"],
        ),
    ]
    if abs(row["flops_per_token"] - torch_run["flops_per_token"]) > 1e-6 * row["flops_per_token"]:
        print(
            f"note: the two models differ in FLOPs per token ({row['flops_per_token']:,.0f} against "
            f"{torch_run['flops_per_token']:,.0f}): not the same shape"
        )
    print(
        f"{row['preset']}, {row['parameters']:,} parameters, {row['tokens_per_step']:,} tokens a step, "
        f"{row['flops_per_token'] / 1e6:,.1f} MFLOP per token (6·N + 12·L·H·T, PaLM appendix B), {device}"
    )
    print("")
    print(
        "| side | tokens/s | model TFLOP/s | MFU vs datasheet"
        + (f" ({peak:g})" if peak else "")
        + " | MFU vs the framework's measured matmul |"
    )
    print("| --- | --- | --- | --- | --- |")
    bugs = 0
    for label, fw, rate, fpt in sides:
        flops = rate * fpt
        bug = ceiling.check(label, flops, ceil[fw])
        if bug:
            print(f"| {label} | {bug} | | | |")
            bugs += 1
            continue
        mfu_peak = f"{flops / (peak * 1e12):.1%}" if peak else "– (unknown device)"
        mfu_ceil = f"{flops / ceil[fw]:.1%} of {ceil[fw] / 1e12:,.3f} TFLOP/s" if ceil[fw] else "–"
        print(f"| {label} | {rate:,.0f} | {flops / 1e12:,.3f} | {mfu_peak} | {mfu_ceil} |")
    print("")
    print(f"gpt2ja JAX ÷ PyTorch: {row['tokens_per_s'] / torch_run['tokens_per_s']:.2f}")
    if peak:
        print(f"datasheet: {source}")
    if bugs and not args.judge:
        print("(not judged: timings on a shared CPU, whose ceiling moves with the other jobs' load)")
    return 1 if bugs and args.judge else 0


def _newest(run: str):
    from gpt2ja.model import checkpoint

    path = checkpoint.latest(os.path.join(run, "checkpoints"))
    if path is None:
        raise SystemExit(f"error: no checkpoint in {run}/checkpoints")
    return checkpoint.load(path)


def _losses(run: str) -> dict[int, float]:
    rows = [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows if "loss" in r]
    if steps != sorted(set(steps)):
        raise SystemExit(f"error: {run}/metrics.jsonl repeats or goes back: logged steps {steps}")
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def resume(args) -> int:
    import numpy as np

    a, b = _newest(args.killed), _newest(args.unbroken)
    ok = True
    for name, ck in (("killed and resumed", a), ("unbroken", b)):
        if ck.step != args.steps:
            print(f"error: the {name} run's newest checkpoint is step {ck.step}, not {args.steps}")
            ok = False
    keys = sorted(k for k in a.arrays if k.startswith(("model/", "optimizer/")))
    other = sorted(k for k in b.arrays if k.startswith(("model/", "optimizer/")))
    if keys != other:
        print(f"error: the checkpoints hold other arrays ({sorted(set(keys) ^ set(other))[:5]} …)")
        return 1
    worst = {"model": (0.0, ""), "optimizer": (0.0, "")}
    unequal = 0
    for k in keys:
        x, y = np.asarray(a.arrays[k]), np.asarray(b.arrays[k])
        if x.shape != y.shape:
            print(f"error: {k} has shape {x.shape} against {y.shape}")
            return 1
        if not np.array_equal(x, y):
            unequal += 1
        if x.dtype.kind == "f":
            d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
            part = k.split("/", 1)[0]
            if d > worst[part][0]:
                worst[part] = (d, k)
    weights = sum(1 for k in keys if k.startswith("model/"))
    print(
        f"step {a.step} against step {b.step}, examples {a.examples:,} against {b.examples:,}: {len(keys)} arrays "
        f"({weights} weights, {len(keys) - weights} optimizer), {len(keys) - unequal} bitwise equal"
    )
    for part, (d, k) in worst.items():
        print(f"max abs difference, {part}: {d:.3g}" + (f" ({k})" if k else ""))
    la, lb = _losses(args.killed), _losses(args.unbroken)
    logged = sorted(la)
    if logged != list(range(logged[0], args.steps + 1)) if logged else True:
        print(f"error: the resumed run logged steps {logged}, not every step to {args.steps} once")
        ok = False
    else:
        print(f"resumed run: steps {logged[0]}..{logged[-1]} logged once each, in order")
    gaps = [abs(la[s] - lb[s]) for s in logged if s in lb]
    if gaps:
        print(
            f"training loss, killed+resumed against unbroken, at {len(gaps)} steps: max difference {max(gaps):.3g} "
            f"(step {logged[-1]}: {la[logged[-1]]:.6f} against {lb.get(logged[-1], float('nan')):.6f})"
        )
    if a.examples != b.examples:
        print("error: the runs stopped at other data positions")
        ok = False
    if args.bitwise:
        if unequal:
            print(
                f"error: {unequal} arrays differ; on the CPU a resumed run must end bit for bit where the unbroken "
                "one does"
            )
            ok = False
        else:
            print("weights and optimizer state: bitwise equal to the unbroken run's")
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--jax", required=True)
    c.add_argument("--torch", required=True)
    c.add_argument("--ceiling-jax", required=True)
    c.add_argument("--ceiling-torch", required=True)
    c.add_argument("--judge", action="store_true", help="fail on a figure above its measured ceiling")
    r = sub.add_parser("resume")
    r.add_argument("--killed", required=True)
    r.add_argument("--unbroken", required=True)
    r.add_argument("--steps", type=int, required=True)
    r.add_argument("--bitwise", action="store_true")
    args = ap.parse_args()
    sys.exit(compare(args) if args.cmd == "compare" else resume(args))


if __name__ == "__main__":
    main()

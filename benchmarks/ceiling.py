"""The matmul ceiling of this machine, measured in each framework, and what every benchmark prints about the machine.

A training figure means little without the ceiling it is measured against. This
module gives, for JAX, PyTorch and TensorFlow alike, the best FLOP/s of large
square matrix products in a precision (``fp32`` on a CPU, ``bf16`` on a GPU) on
the framework's default device, measured in the same run as the figure; a model
FLOP/s above it is a benchmark bug (the step was not timed as it ran, or counted
work it did not do), never a result: :func:`check`.

Also: the datasheet peak of known accelerators (:func:`datasheet_peak`, with
where the figure comes from), the model FLOPs per token of a GPT-2 shape
(:func:`flops_per_token`) and the machine line every benchmark prints
(:func:`machine_lines`: CPU model and SIMD flags from /proc/cpuinfo, cores,
OS, Python, the frameworks' versions, the date).

Usage::

    python benchmarks/ceiling.py --framework jax,torch --dtype bf16 --size 8192   # on a GPU
    .venv/bin/python benchmarks/ceiling.py --framework tf,jax,torch --dtype fp32 --size 2048
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from importlib import metadata

#: dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a substring of the device name; sources: NVIDIA's
#: datasheets give "with sparsity" figures, halved here: H100 SXM 1,979 → 989 (H100 NVL 1,671 → 835, H100 PCIe
#: 1,513 → 756); H200 (SXM and NVL datasheet) 1,979 → 989; A100 312 dense (its datasheet's bf16 row); L4 242 → 121
DATASHEET_BF16_TFLOPS = (
    ("H200", 989.0, "NVIDIA H200 datasheet: 1,979 TFLOP/s bf16 with sparsity, 989 dense"),
    ("H100 NVL", 835.0, "NVIDIA H100 datasheet (NVL): 1,671 TFLOP/s bf16 with sparsity, 835 dense"),
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet (PCIe): 1,513 TFLOP/s bf16 with sparsity, 756 dense"),
    ("H100", 989.0, "NVIDIA H100 datasheet (SXM): 1,979 TFLOP/s bf16 with sparsity, 989 dense"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense"),
    ("L4", 121.0, "NVIDIA L4 datasheet: 242 TFLOP/s bf16 with sparsity, 121 dense"),
)

SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
)


def datasheet_peak(device_name: str) -> tuple[float, str] | None:
    """(dense bf16 TFLOP/s, source) for a GPU's name as its driver gives it, or None when unknown."""
    for key, tflops, source in DATASHEET_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, source
    return None


def flops_per_token(num_params_without_positions: int, layers: int, hidden: int, seq_len: int) -> float:
    """PaLM's model FLOPs per token (Chowdhery et al. 2022, appendix B): ``6·N + 12·L·H·T``.

    N: parameters without the position embedding (a tied output layer counts once); L layers; H the width
    (heads × head width); T the sequence length. The first term is the matmuls of forward + backward (2 + 4
    FLOPs per parameter and token), the second the attention scores and their weighted sum, forward and
    backward; nothing for recomputation, elementwise work or the optimizer.
    """
    return 6.0 * num_params_without_positions + 12.0 * layers * hidden * seq_len


def _best(run, flops: float, repeats: int) -> float:
    run()  # compile, warm up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = max(best, flops / (time.perf_counter() - t0))
    return best


def jax_matmul(dtype: str, size: int, repeats: int = 5, chain: int = 4) -> float:
    """Best FLOP/s of ``chain`` dependent ``size``² products in one jitted call (JAX's default device)."""
    import jax
    import jax.numpy as jnp

    dt = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}[dtype]
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    scale = 1.0 / size**0.5  # keeps the chained products finite
    a = (jax.random.normal(ka, (size, size), jnp.float32) * scale).astype(dt)
    b = (jax.random.normal(kb, (size, size), jnp.float32) * scale).astype(dt)

    @jax.jit
    def f(a, b):
        for _ in range(chain):
            a = a @ b
        return a

    return _best(lambda: f(a, b).block_until_ready(), chain * 2.0 * size**3, repeats)


def torch_matmul(dtype: str, size: int, repeats: int = 5, chain: int = 4, device: str | None = None) -> float:
    """Best FLOP/s of ``chain`` dependent ``size``² ``torch.matmul`` products (CUDA when there is one)."""
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    g = torch.Generator(device="cpu").manual_seed(0)
    scale = 1.0 / size**0.5
    a = (torch.randn(size, size, generator=g) * scale).to(dev, dt)
    b = (torch.randn(size, size, generator=g) * scale).to(dev, dt)

    def run():
        x = a
        for _ in range(chain):
            x = x @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        else:
            float(x[0, 0])

    with torch.no_grad():
        return _best(run, chain * 2.0 * size**3, repeats)


def tf_matmul(dtype: str, size: int, repeats: int = 5, chain: int = 4) -> float:
    """Best FLOP/s of ``chain`` dependent ``size``² ``tf.matmul`` products in one tf.function."""
    import tensorflow as tf

    dt = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[dtype]
    scale = 1.0 / size**0.5
    a = tf.cast(tf.random.stateless_normal([size, size], seed=[0, 1]) * scale, dt)
    b = tf.cast(tf.random.stateless_normal([size, size], seed=[0, 2]) * scale, dt)

    @tf.function
    def f(a, b):
        for _ in range(chain):
            a = tf.linalg.matmul(a, b)
        return a[0, 0]

    return _best(lambda: float(f(a, b)), chain * 2.0 * size**3, repeats)


MATMUL = {"jax": jax_matmul, "torch": torch_matmul, "tf": tf_matmul}


def check(label: str, model_flops: float, ceiling: float | None) -> str:
    """'' when ``model_flops`` is at most the measured ceiling, else one line that says it is a benchmark bug."""
    if ceiling and model_flops > ceiling:
        return (
            f"BENCHMARK BUG: {label} implies {model_flops / 1e9:,.1f} GFLOP/s of model FLOPs, above the "
            f"{ceiling / 1e9:,.1f} GFLOP/s matmul ceiling measured in the same run: the step was not timed as "
            "it ran, or did less work than counted; not a result"
        )
    return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The matmul-relevant SIMD flags /proc/cpuinfo names (the whole list is a hundred words)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith(("flags", "Features"))), [])
    except OSError:
        flags = []
    return [f for f in SIMD_FLAGS if f in flags]


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_lines(
    packages: tuple[str, ...] = ("numpy", "jax", "jaxlib", "keras", "keras-hub", "tensorflow", "torch", "transformers"),
) -> list[str]:
    """What a benchmark prints first: date, CPU (model, SIMD flags, cores, load), OS, Python, package versions."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"date: {now}",
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, flags {' '.join(cpu_flags()) or 'none listed'}; "
        f"load average {os.getloadavg()[0]:.2f}",
        f"OS: {platform.system()} {platform.release()} {platform.machine()}; Python {platform.python_version()}",
        "versions: " + ", ".join(f"{p} {version(p)}" for p in packages),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framework", default="jax,torch", help="comma-separated: jax, torch, tf")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU), as the benchmark sets it")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    got = {}
    for fw in [f.strip() for f in args.framework.split(",") if f.strip()]:
        try:
            got[fw] = MATMUL[fw](args.dtype, args.size, args.repeats)
        except Exception as err:  # noqa: BLE001 - a framework missing here is reported, not fatal
            got[fw] = None
            print(f"{fw}: failed ({type(err).__name__}: {str(err)[:200]})", file=sys.stderr)
    if args.json:
        print(json.dumps({"dtype": args.dtype, "size": args.size, "threads": args.threads, "flops": got}))
        return
    for line in machine_lines():
        print(line)
    for fw, flops in got.items():
        shown = (
            f"{flops / 1e12:,.2f} TFLOP/s"
            if flops and flops > 1e12
            else (f"{flops / 1e9:,.1f} GFLOP/s" if flops else "failed")
        )
        print(f"{fw} {args.dtype} matmul {args.size}² (4 chained products, best of {args.repeats}): {shown}")


if __name__ == "__main__":
    main()

"""What the lent GPU machines lack for gpt2ja's JAX path, as wheels to carry, and a local stand-in of such a machine.

The device machines (one H100 or H200; see docs/train.md "GPUs and Cloud
TPU") have Python 3.12, PyTorch, JAX on CUDA 13, transformers, sentencepiece,
tensorboard and numpy (:data:`DEVICE_HAS`, their image's package list), but no
TensorFlow, no Keras and no package index, and take at most 64 MiB of files per
command. gpt2ja's JAX backend (``gpt2ja train --backend jax``, ``gpt2ja eval``,
``gpt2ja export hf``) needs :data:`CARRY` besides: Keras 3 and KerasHub (the
model), their small dependencies, pydantic and typer (the config and command
line), pyppmd (the evaluation's PPMd baseline).

Two commands::

    # wheels of the versions installed here, for the device's CPython 3.12 on x86-64
    .venv/bin/python benchmarks/device_env.py wheels .device/wheels --python-version 3.12

    # a stand-in of the device here: an interpreter that sees only the DEVICE_HAS packages this
    # venv holds plus CARRY (symbolic links into this venv), and no TensorFlow at all
    .venv/bin/python benchmarks/device_env.py simulate /tmp/fake-device      # → /tmp/fake-device/bin/python

The stand-in is how :data:`CARRY` was found and is kept honest:
``benchmarks/accelerator_check.sh --cpu-smoke`` runs every step of the check
with its interpreter, so a package the JAX path imports that is neither on the
device nor carried fails the test suite here, not a lease there. It uses this
venv's versions of the device's packages (numpy, jax, torch, transformers, …),
which are not the device's own (jax 0.10 CPU here, 0.11.2 CUDA there).

``python benchmarks/device_env.py missing`` lists the installed distributions
that a stand-in without CARRY lacks for a given import (a quick way to find a
new dependency).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

#: what the device image ('cuda') holds, as read on 2026-11-17 (/work/.library/device/KINDS.md, "Python
#: packages already there"); normalised names
DEVICE_HAS = frozenset(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)

#: carried as wheels (the versions installed here): what the JAX path imports that the device lacks, found by
#: running the whole check in the stand-in. typer is on the device too, but gpt2ja's command line is tested with
#: this version (recent typer needs pydantic and annotated-doc, which it gets here), so it travels pinned.
CARRY = (
    "keras",
    "namex",
    "optree",  # Keras 3 (absl-py, h5py, ml-dtypes, rich: on the device)
    "keras-hub",
    "kagglehub",
    "kagglesdk",  # KerasHub imports kagglehub at import time
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typer",
    "pyppmd",  # gpt2ja/model/baselines.py: PPMd order 8
    "datasketch",  # gpt2ja's --config/--set reader imports gpt2ja.flows.config,
)  # which imports the clean stage's dedup (MinHash)

#: wheels whose platform tags pip matches exactly (README of the device tool, "Notes"): tried in this order
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)

BLOCKER = 'raise ImportError("TensorFlow is not installed on this machine (gpt2ja device stand-in)")\n'


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, metadata.Distribution]:
    """This interpreter's distributions by normalised name."""
    return {norm(d.metadata["Name"]): d for d in metadata.distributions() if d.metadata["Name"]}


def wheels(dest: Path, python_version: str) -> list[Path]:
    """Download CARRY's wheels (the versions installed here) for CPython ``python_version`` on x86-64 Linux."""
    have = installed()
    missing = [n for n in CARRY if norm(n) not in have]
    if missing:
        sys.exit(f"device_env: {', '.join(missing)} not installed here: run it with the project's .venv/bin/python")
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{have[norm(n)].metadata['Name']}=={have[norm(n)].version}" for n in CARRY]
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    abi = "cp" + python_version.replace(".", "")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        *plat,
        "-d",
        str(dest),
        *pins,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"device_env: pip download failed:\n{done.stderr[-2000:]}")
    got = sorted(dest.glob("*.whl"))
    names = {norm(p.name.split("-")[0]) for p in got}
    lacking = [n for n in CARRY if norm(n) not in names]
    if lacking:
        sys.exit(f"device_env: no wheel came for {', '.join(lacking)}")
    return got


def _top_entries(dist: metadata.Distribution) -> set[str]:
    """The top-level names (packages, modules, .dist-info) a distribution put in site-packages."""
    out = set()
    for f in dist.files or []:
        parts = Path(f).parts
        if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
            out.add(parts[0])
    return out


def _closure(have: dict[str, metadata.Distribution], roots: set[str], exclude: set[str]) -> set[str]:
    """``roots`` and what they require as installed here (no extras), leaving out ``exclude``.

    The device's own versions of its packages bring their own dependencies; this venv's newer versions may
    need others (transformers 5.25 here needs httpx2, 5.17 there does not), which the stand-in must see.
    CARRY stays out, so that a carried package is never present only because some device package needs it here.
    """
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name in exclude or name not in have:
            continue
        seen.add(name)
        for req in have[name].requires or []:
            if "extra ==" in req:
                continue
            todo.append(norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen


def simulate(dest: Path, *, carry: bool = True) -> Path:
    """A venv at ``dest`` that sees only DEVICE_HAS (and CARRY) from this interpreter's packages; its python."""
    if (dest / "bin" / "python").exists():
        import shutil

        shutil.rmtree(dest)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(dest)], check=True)
    site = Path(
        subprocess.run(
            [str(dest / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    here = Path(sysconfig.get_paths()["purelib"])
    have = installed()
    wanted = _closure(have, DEVICE_HAS & have.keys(), exclude={norm(n) for n in CARRY})
    if carry:
        wanted |= {norm(n) for n in CARRY}
    linked = []
    for name, dist in sorted(have.items()):
        if name not in wanted:
            continue
        root = Path(dist.locate_file(""))
        for entry in sorted(_top_entries(dist)):
            src = root / entry
            if src.exists() and not (site / entry).exists():
                os.symlink(src, site / entry)
        linked.append(name)
    blocker = dest / "blocker" / "tensorflow"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text(BLOCKER)
    # tensorflow first on the path, before anything: `import tensorflow` raises ImportError as on the device
    (site / "00-gpt2ja-no-tensorflow.pth").write_text(f"import sys; sys.path.insert(0, {str(dest / 'blocker')!r})\n")
    (dest / "LINKED.txt").write_text("\n".join(linked) + "\n")
    assert here != site
    return dest / "bin" / "python"


def missing(module: str) -> list[str]:
    """Distributions of this interpreter outside DEVICE_HAS that ``import module`` loads."""
    code = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")}
    names = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    owners = metadata.packages_distributions()
    dists = {norm(d) for n in names for d in owners.get(n, [])}
    return sorted(d for d in dists if d not in DEVICE_HAS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="download CARRY's wheels for the device")
    w.add_argument("dest", type=Path)
    w.add_argument("--python-version", default="3.12", help="the device's CPython (3.12)")
    s = sub.add_parser("simulate", help="a local interpreter that sees only what the device has (+ CARRY)")
    s.add_argument("dest", type=Path)
    s.add_argument("--no-carry", action="store_true", help="leave CARRY out (to see what fails without it)")
    m = sub.add_parser("missing", help="installed distributions outside DEVICE_HAS that an import loads")
    m.add_argument("module")
    args = ap.parse_args()
    if args.cmd == "wheels":
        got = wheels(args.dest, args.python_version)
        size = sum(p.stat().st_size for p in got)
        print("\n".join(p.name for p in got))
        print(f"{len(got)} wheels, {size / 2**20:.1f} MiB in {args.dest}")
    elif args.cmd == "simulate":
        print(simulate(args.dest, carry=not args.no_carry))
    else:
        print("\n".join(missing(args.module)))


if __name__ == "__main__":
    main()

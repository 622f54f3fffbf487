"""Per-call cost of gpt2ja.infra.storage: small writes, reads, listings and existence checks, locally and on GCS.

Each round writes one small object (``write_bytes``), reads it back
(``read_bytes``), lists its directory (``list_files``, which holds ``--files``
objects) and asks ``exists``; GCS runs against a gcp-storage-emulator this script
starts on a free port, the way tests/conftest_gcs.py does.  The locks' calls
(``read_generation`` then ``write_if_generation``) are timed on GCS too, and
each GCS call's HTTP requests are counted once, through
tests/gcs_precondition_proxy.py in front of a fresh emulator.  Prints
the machine, the library versions and the commit, then one line per operation:
the mean and median milliseconds per call over ``--rounds`` rounds.

``--impl FILE`` times another version of the module as well (e.g. one from
git history), alternating the two ``--repeat`` times so that both see the same
load on a shared machine; each line then names its implementation.

Usage::

    python benchmarks/storage_bench.py [--rounds 200] [--files 20] [--backend local|gcs|both] [--json OUT]
    git show COMMIT:gpt2ja/infra/storage.py > /tmp/storage_old.py
    python benchmarks/storage_bench.py --impl /tmp/storage_old.py --repeat 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpt2ja.infra import storage as storage_current  # noqa: E402

BUCKET = "gpt2ja-bench-bucket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_emulator() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--in-memory", "--default-bucket", BUCKET]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"gcp_storage_emulator did not open port {port} within 30 s")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo", encoding="utf-8") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit.stdout.strip() or "unknown",
        "versions": {
            n: _version(n) for n in ("google-cloud-storage", "gcsfs", "fsspec", "aiohttp", "gcp-storage-emulator")
        },
    }


def _time(fn, rounds: int) -> list[float]:
    out = []
    for i in range(rounds):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _load(path: str):
    spec = importlib.util.spec_from_file_location(f"storage_impl_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(storage, root: str, rounds: int, files: int, *, locks: bool) -> dict[str, list[float]]:
    d = storage.join(root, "dir")
    for i in range(files):
        storage.write_bytes(storage.join(d, f"f{i:03d}.bin"), b"x" * 100)
    payload = b"y" * 1000
    target = storage.join(d, "round.bin")
    results = {
        "write_bytes": _time(lambda i: storage.write_bytes(target, payload), rounds),
        "read_bytes": _time(lambda i: storage.read_bytes(target), rounds),
        "list_files": _time(lambda i: storage.list_files(d), rounds),
        "exists": _time(lambda i: storage.exists(target), rounds),
    }
    if locks:
        lock = storage.join(root, ".lock-bench.lock")
        storage.write_if_generation(lock, b"0", 0)

        def lock_round(i: int) -> None:
            _data, gen = storage.read_generation(lock)
            storage.write_if_generation(lock, str(i).encode(), gen)

        results["read_generation+write_if_generation"] = _time(lock_round, rounds)
    storage.delete(d)
    return results


def count_requests(storage) -> dict[str, int]:
    """HTTP requests per call on GCS, counted by tests/gcs_precondition_proxy.py in front of a fresh emulator."""
    from tests.gcs_precondition_proxy import PreconditionProxy

    proc, host = _start_emulator()
    proxy = PreconditionProxy(host).start()
    os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    storage.reset_client()
    root = f"gs://{BUCKET}/count-{uuid.uuid4().hex[:8]}"
    target, lock = storage.join(root, "d", "x.bin"), storage.join(root, ".lock-bench.lock")

    def read_stream() -> None:
        with storage.open(target) as f:
            f.read()

    ops = [
        ("write_bytes", lambda: storage.write_bytes(target, b"x" * 1000)),
        (
            "write_bytes create_only",
            lambda: storage.write_bytes(storage.join(root, "d", "c.bin"), b"c", create_only=True),
        ),
        ("read_bytes", lambda: storage.read_bytes(target)),
        ("open+read", read_stream),
        ("list_files", lambda: storage.list_files(root)),
        ("exists", lambda: storage.exists(target)),
        ("size", lambda: storage.size(target)),
        ("file_info", lambda: storage.file_info(target)),
        ("write_if_generation", lambda: storage.write_if_generation(lock, b"0", 0)),
        ("read_generation", lambda: storage.read_generation(lock)),
        ("delete (a prefix of 6 objects)", lambda: storage.delete(root)),
    ]
    counts = {}
    try:
        # The filesystem's and the client's set-up (the client reads the bucket's metadata once) are not counted.
        storage.write_bytes(storage.join(root, "warm.bin"), b"w")
        storage.write_bytes(storage.join(root, "warm-client.bin"), b"w", create_only=True)
        for name, op in ops:
            before = len(proxy.requests)
            op()
            counts[name] = len(proxy.requests) - before
    finally:
        proxy.stop()
        proc.terminate()
        proc.wait(timeout=10)
        del os.environ["STORAGE_EMULATOR_HOST"]
        storage.reset_client()
    return counts


def run(storage, backend: str, rounds: int, files: int) -> dict[str, list[float]]:
    if backend == "local":
        with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp:
            return bench(storage, tmp, rounds, files, locks=False)
    proc, host = _start_emulator()
    os.environ["STORAGE_EMULATOR_HOST"] = host
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    storage.reset_client()
    try:
        root = f"gs://{BUCKET}/bench-{uuid.uuid4().hex[:8]}"
        storage.write_bytes(storage.join(root, "warm.bin"), b"w")  # the client's set-up is not a round
        return bench(storage, root, rounds, files, locks=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        del os.environ["STORAGE_EMULATOR_HOST"]
        storage.reset_client()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--files", type=int, default=20, help="objects in the listed directory")
    parser.add_argument("--backend", choices=("local", "gcs", "both"), default="both")
    parser.add_argument("--impl", help="a storage.py of another version, timed alternately with this one")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each implementation (alternating)")
    parser.add_argument("--json", help="also write the figures here as JSON")
    args = parser.parse_args()

    machine = _machine()
    print(json.dumps(machine))
    impls = {"current": storage_current}
    if args.impl:
        impls = {"impl": _load(args.impl), "current": storage_current}
    backends = ["local", "gcs"] if args.backend == "both" else [args.backend]
    samples: dict = {}
    for _ in range(args.repeat):
        for backend in backends:
            for name, module in impls.items():
                for op, ms in run(module, backend, args.rounds, args.files).items():
                    samples.setdefault((name, backend, op), []).extend(ms)
    report: dict = {"machine": machine, "rounds": args.rounds, "repeat": args.repeat, "files": args.files, "ms": {}}
    if args.impl:
        report["impl"] = args.impl
    for (name, backend, op), ms in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        mean, median = statistics.fmean(ms), statistics.median(ms)
        report["ms"].setdefault(name, {}).setdefault(backend, {})[op] = {
            "mean": round(mean, 3),
            "median": round(median, 3),
        }
        print(f"{name:7s} {backend:5s} {op:38s} mean {mean:8.3f} ms  median {median:8.3f} ms  ({len(ms)} calls)")
    if "gcs" in backends:
        for name, module in impls.items():
            report.setdefault("requests", {})[name] = counts = count_requests(module)
            print(f"{name:7s} gcs   requests per call: " + ", ".join(f"{op} {n}" for op, n in counts.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

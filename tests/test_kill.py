"""A kill at any instant loses nothing: each stage SIGKILLed at seeded random instants, then run to its end.

The final artifact equals an uninterrupted run's byte for byte (for the files
crawl, whose documents carry their fetch time: the same documents), it verifies
against its manifest, and nothing is left behind: no temp file, no scratch dir
of a killed process, no process of a killed run. Only the stage's own process
is killed, as the kernel's OOM killer or a preempted VM would; its worker
processes must notice and end by themselves.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.crawler.mirror import MirrorServer
from gpt2ja.infra import stage, storage
from tests.conftest import MIRROR, TestSiteHandler, author_urls
from tests.corpora import mirror_stages, write_tiny_run

pytestmark = pytest.mark.slow

KILLS = 3  # killed runs per stage before the one that is left to finish
VOLATILE = ("created_at", "timings", "build_id", "uri")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    stages = mirror_stages(tmp_path_factory.mktemp("kill"))
    base, clean, tok = stages["base"], stages["clean"], stages["tokenizer"]
    from gpt2ja.tokenization.shards import ShardsConfig, write_shards

    shards = write_shards(
        clean,
        tok,
        str(base / "root" / "shards"),
        ShardsConfig(seq_len=32, num_shards={"train": 2, "validation": 1}, workers=1),
    )
    run = write_tiny_run(base / "run")  # an untrained tiny run: what export needs, in a second
    site = _site(base / "site")
    server = MirrorServer(str(site), handler=TestSiteHandler)
    server.httpd.slow_seconds = 0.3  # the pages sit under /slow/: the crawl lasts long enough to be killed
    with server, MirrorServer(str(MIRROR), handler=TestSiteHandler) as mirror:
        yield {
            **stages,
            "seed": server.url("/index.html"),
            "run": str(run),
            "shards": shards,
            "authors": author_urls(mirror),
        }


def _site(site: Path, pages: int = 40) -> Path:
    """A small Japanese site: an index linking to pages (from the Aozora texts) that answer slowly."""
    (site / "slow").mkdir(parents=True)
    paras = [
        "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。",
        "何でも薄暗いじめじめした所で泣いていた。",
        "吾輩はここで始めて人間というものを見た。しかもあとで聞くとそれは書生という人間中で一番獰悪な種族であった。",
    ]
    links = []
    for n in range(pages):
        body = "".join(f"<p>{n}番目の頁。{p * (1 + n % 3)}</p>" for p in paras)
        (site / "slow" / f"p{n}.html").write_text(
            f'<html><head><meta charset="utf-8"><title>頁{n}</title></head><body><article><h1>頁{n}</h1>{body}'
            f"</article></body></html>",
            encoding="utf-8",
        )
        links.append(f'<li><a href="/slow/p{n}.html">頁{n}</a></li>')
    (site / "index.html").write_text(
        f'<html><head><meta charset="utf-8"><title>目次</title></head><body><ul>{"".join(links)}</ul></body></html>',
        encoding="utf-8",
    )
    return site


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpt2ja", *args]


COMMANDS = {
    # --warc: a killed session leaves its WARC file half filled (web crawls write WARC by default)
    "crawl-aozora": lambda i, out: _cli(
        "crawl",
        "aozora",
        *[a for u in i["authors"] for a in ("--start-url", u)],
        "--root",
        str(out),
        "--crawl-id",
        "k",
        "--no-polite",
        "--progress-interval",
        "0",
        "--warc",
    ),
    "crawl-files": lambda i, out: _cli("crawl", "files", i["text"], "--root", str(out), "--crawl-id", "k"),
    "crawl-web": lambda i, out: _cli(
        "crawl",
        "web",
        "--seed",
        i["seed"],
        "--root",
        str(out),
        "--crawl-id",
        "k",
        "--no-polite",
        "--progress-interval",
        "0",
    ),
    "clean": lambda i, out: _cli("clean", "--in", i["raw"], "--out", str(out), "--workers", "2"),
    "tokenizer": lambda i, out: _cli(
        "tokenizer", "train", "--corpus", i["clean"], "--vocab-size", "3000", "--out", str(out)
    ),
    "shards": lambda i, out: _cli(
        "shards",
        "--corpus",
        i["clean"],
        "--tokenizer",
        i["tokenizer"],
        "--seq-len",
        "64",
        "--out",
        str(out),
        "--workers",
        "2",
    ),
    # tiny model, 16 steps, a checkpoint every 2: a kill loses at most the steps since the last one
    "train": lambda i, out: _cli(
        "train",
        "--data",
        i["shards"],
        "--run",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "16",
        "--batch-tokens",
        "256",
        "--micro-batch",
        "8",
        "--warmup-steps",
        "2",
        "--set",
        "checkpoint_every=2",
        "--set",
        "eval_batches=0",
        "--set",
        "log_every=2",
    ),
    "export": lambda i, out: _cli("export", "hf", "--run", i["run"], "--out", str(out)),
}
# the same run on the JAX backend (its own process: Keras reads its backend when first imported), two micro-batches
# a step and dropout on: the scan's dropout states and the data position must resume as the weights do
COMMANDS["train-jax"] = lambda i, out: [
    *COMMANDS["train"](i, out),
    "--backend",
    "jax",
    "--batch-tokens",
    "512",
    "--set",
    "dropout=0.1",
]


def _artifact(name: str, out: Path) -> str:
    return str(out / "raw" / name.split("-")[1] / "k") if name.startswith("crawl-") else str(out)


def _content(name: str, uri: str) -> dict:
    """What must be equal between an interrupted and an uninterrupted run."""
    manifest = {k: v for k, v in storage.read_manifest(uri).items() if k not in VOLATILE}
    if name.startswith("train"):  # the weights and optimizer state of the last checkpoint, bit for bit, and the curve
        return {
            "weights": _weights(uri),
            "metrics": [{k: v for k, v in row.items() if k in ("step", "loss", "lr")} for row in _metrics(uri)],
        }
    if name.startswith("crawl-"):  # a document records when it was fetched: compare the documents, not the bytes
        docs = sorted((d.id, d.title, d.text) for d in read_documents(uri))
        manifest.pop("files")
        return {"manifest": manifest, "documents": docs, "warc": _warc_records(uri)}
    return {"manifest": manifest, "files": {f["path"]: _bytes(Path(uri, f["path"])) for f in manifest["files"]}}


def _warc_records(uri: str) -> list[tuple]:
    """A crawl's WARC records as what two crawls of one site share: type, target URI, HTTP status or request
    line, payload digest; each response once. Not the bytes: record ids, WARC-Date, the server's Date header
    and where the files were cut belong to each fetch."""
    from warcio.archiveiterator import ArchiveIterator

    found = []
    for path in sorted(Path(uri, "warc").glob("*.warc.gz")):
        with open(path, "rb") as fh:
            for r in ArchiveIterator(fh):
                if r.rec_type != "warcinfo":
                    found.append(
                        (
                            r.rec_type,
                            r.rec_headers.get_header("WARC-Target-URI"),
                            r.http_headers.statusline,
                            r.rec_headers.get_header("WARC-Payload-Digest"),
                        )
                    )
    return sorted(found)


def _weights(run: str) -> dict:
    from gpt2ja.model import checkpoint, runs

    arrays = checkpoint.load(runs.latest_checkpoint(run)).arrays
    return {name: value.tobytes() for name, value in arrays.items() if name.startswith(("model/", "optimizer/"))}


def _metrics(run: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def _bytes(path: Path):
    """A file's bytes; a nested artifact's manifest (export's tokenizer copy) without its creation time."""
    if path.name == storage.MANIFEST:
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}
    return path.read_bytes()


def _leftovers(uri: str, killed: list[int]) -> list[str]:
    found = [str(p) for pattern in (".*.tmp", "*.tmp-*") for p in Path(uri).rglob(pattern)]
    for entry in os.scandir(tempfile.gettempdir()):
        parts = entry.name.split("-")
        if entry.name.startswith("gpt2ja-") and len(parts) > 3 and parts[2].isdigit() and int(parts[2]) in killed:
            found.append(entry.path)
    return found


@pytest.mark.parametrize("name", COMMANDS)
def test_a_stage_killed_at_random_instants_ends_as_an_uninterrupted_run(name, inputs, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "killed"
    started = time.monotonic()
    first = subprocess.run(COMMANDS[name](inputs, reference), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    duration = time.monotonic() - started  # kill instants scale with it: a loaded machine kills later
    rng = random.Random(f"kill-{name}")
    killed, sessions, scale = [], [], 1.0
    for _ in range(3 * KILLS):
        if len(killed) == KILLS:
            break
        proc = subprocess.Popen(
            COMMANDS[name](inputs, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        sessions.append(proc.pid)  # the session id: the workers it starts stay in it
        time.sleep(rng.uniform(0.3, 0.95) * duration * scale)  # the kill instant
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.pid)
        elif not killed:  # it finished first (a warm machine runs faster than the reference did): start over, sooner
            shutil.rmtree(out, ignore_errors=True)
            scale /= 2
        proc.wait()
    print(f"{name}: {len(killed)} of {KILLS} runs killed ({duration:.1f} s uninterrupted)")
    assert killed, "no run was killed: the kill instants missed the stage"
    done = subprocess.run(COMMANDS[name](inputs, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = _artifact(name, out)
    assert stage.verify(uri, deep=True)[1] == []
    assert _content(name, uri) == _content(name, _artifact(name, reference))
    assert _leftovers(uri, killed) == []
    # no process of a killed run is left (its workers end when they find their parent gone)
    orphans = []
    for _ in range(600):
        orphans = [
            p
            for p in psutil.process_iter(["pid", "status"])  # a zombie has ended (its reaper is slow)
            if _sid(p.pid) in sessions and p.info["status"] != psutil.STATUS_ZOMBIE
        ]
        if not orphans:
            break
        time.sleep(0.1)
    for p in orphans:
        p.kill()
    assert orphans == []


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None

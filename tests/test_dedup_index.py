"""The persistent dedup index (``dedup: {engine: sharded, index: auto}``): a refresh reads only its new crawl.

Version 1 is a crawl of half the bundled mirror's works; version 2 repeats
half of them under other URLs (exact copies), two edited (near copies) and one
under its own URL (fetched again), and adds the other half of the mirror. The
indexed refresh keeps exactly the new works, and the kept documents — the
very bytes of the corpus parts — are those of a clean from scratch over both
crawls. "Reads none of version 1's text" is checked twice: version 1's raw
parts are deleted before the refresh, and every file the refresh opens (all in
this process: the parts run on an in-process mapper) is recorded through a
Python audit hook; none is a part version 1 wrote. Then: a refresh that skips,
a lost corpus manifest written again from the index, an index build
interrupted (an exception, and the CLI SIGKILLed inside the index's stage)
and finished, damaged index files, refused settings, the ``corpus-refresh``
flow over a ``files`` crawl, a Dask cluster and a ``gs://`` root (the storage
emulator), each giving the same corpus parts.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpt2ja.corpus.clean import CleanConfig, CleanError, run_clean
from gpt2ja.corpus.dedup_index import DedupIndexError, read_chain
from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.crawler.extract.aozora import from_zip
from gpt2ja.infra import storage
from tests.assertions import one_line_error
from tests.corpora import ZIPS
from tests.test_clean import outputs, raw_crawl
from tests.test_dedup import edit_sentences
from tests.test_dedup_scalable import InProcess

V1, V2 = "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"
INDEXED = {"engine": "sharded", "index": "auto"}


def work(
    path: Path, *, site: str = "https://lib.example/works/", fetched_at: str = V1, text: str | None = None
) -> Document:
    got = from_zip(path.read_bytes(), path.name)
    return Document.new(
        source="aozora",
        url=site + path.name,
        title=got.title,
        author=got.author,
        text=text if text is not None else unicodedata.normalize("NFKC", got.text),
        fetched_at=fetched_at,
        meta={"aozora_notation_removed": True},
    )


def parts_of(docs: list[Document], size: int = 5) -> list[list[Document]]:
    return [docs[i : i + size] for i in range(0, len(docs), size)]


class Opened:
    """Every path this process opens while ``active`` (a ``sys.addaudithook`` hook stays for the process)."""

    active: "Opened | None" = None

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __enter__(self) -> "Opened":
        Opened.active = self
        return self

    def __exit__(self, *exc) -> None:
        Opened.active = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and Opened.active is not None and isinstance(args[0], (str, bytes)):
        Opened.active.paths.append(str(Path(args[0] if isinstance(args[0], str) else args[0].decode()).resolve()))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def crawls(tmp_path_factory):
    """Raw crawls v1 (24 works) and v2 (12 exact copies, 2 edited copies, 1 refetch, 24 new works)."""
    root = tmp_path_factory.mktemp("index")
    old, new = ZIPS[0::2], ZIPS[1::2]
    v1 = raw_crawl(root, "lib", parts_of([work(p) for p in old]))
    again = [work(p, site="https://mirror.example/copy/", fetched_at=V2) for p in old[0::2]]
    edited = [
        work(
            p,
            site="https://mirror.example/edit/",
            fetched_at=V2,
            text=edit_sentences(unicodedata.normalize("NFKC", from_zip(p.read_bytes(), p.name).text), 0.05),
        )
        for p in old[1:5:2]
    ]
    refetched = [work(old[1], fetched_at=V2)]
    fresh = [work(p, fetched_at=V2) for p in new]
    v2 = raw_crawl(root, "lib.refresh-r2", parts_of(again + edited + refetched + fresh))
    return root, v1, v2, {d.id for d in fresh}


def _clean(inputs: list[str], out: Path, dedup: dict, mapper=None, **kw) -> dict:
    cfg = CleanConfig(inputs=inputs, out=str(out), workers=1, dedup=dedup, **kw)
    run_clean(cfg, map_parts=mapper if mapper is not None else InProcess())
    return storage.read_manifest(str(out))


def _ids(out) -> set[str]:
    return {d.id for d in read_documents([storage.join(str(out), s) for s in ("train", "validation")])}


def _splits(out) -> dict[str, bytes]:
    return {k: v for k, v in outputs(str(out)).items() if k.startswith(("train/", "validation/"))}


@pytest.fixture(scope="module")
def refreshed(crawls, tmp_path_factory):
    """From scratch over v1 + v2; then indexed: v1 alone, v1's raw parts deleted, v1 + v2 (audited)."""
    root, v1, v2, fresh = crawls
    work_root = tmp_path_factory.mktemp("refreshed")
    scratch = _clean([v1, v2], work_root / "scratch", {"engine": "sharded"})
    out = work_root / "clean" / "lib"
    first = _clean([v1], out, INDEXED)
    v1_files = {k: (out / k).stat().st_mtime_ns for k in _splits(out)}
    for part in Path(v1).glob("part-*.jsonl.gz"):  # version 1's text is gone: only its manifest is left
        part.unlink()
    with Opened() as opened:
        second = _clean([v1, v2], out, INDEXED)
    return {
        "root": work_root,
        "scratch": scratch,
        "out": out,
        "first": first,
        "second": second,
        "v1_files": v1_files,
        "opened": opened.paths,
        "v1": v1,
        "v2": v2,
        "fresh": fresh,
    }


@pytest.mark.slow
def test_a_refresh_keeps_only_the_new_works_and_reads_none_of_version_1(refreshed):
    r = refreshed
    out, first, second = r["out"], r["first"], r["second"]
    index = r["root"] / "dedup-index" / "lib"
    assert first["dedup_index"]["produced"] == "v1" and first["dedup_index"]["against"] is None
    info = second["dedup_index"]
    assert (info["against"], info["produced"], info["documents_read"]) == ("v1", "v2", 39)
    assert [storage.resolve_ref(u, str(out)) for u in info["inputs_read"]] == [r["v2"]]
    assert second["dedup"]["documents"] == 38  # the refetch left before dedup (duplicate_id)
    # exactly the new works were added; every document of version 1 stays
    old = _ids_of(first, out)
    assert len(old) == first["counts"]["documents_out"] == 24 and not old & r["fresh"]
    assert _ids(out) == old | r["fresh"]
    assert second["counts"]["documents_out"] == first["counts"]["documents_out"] + len(r["fresh"])
    drops = {k: second["counts"]["drops"][k] - first["counts"]["drops"].get(k, 0) for k in second["counts"]["drops"]}
    assert {k: v for k, v in drops.items() if v} == {"duplicate_id": 1, "exact_duplicate": 12, "near_duplicate": 2}
    # none of version 1's text was opened: not its raw parts (deleted), not the corpus parts v1 wrote
    opened = set(r["opened"])
    raw_v1 = str(Path(r["v1"]).resolve())
    assert {p for p in opened if p.startswith(raw_v1 + "/")} <= {raw_v1 + "/_MANIFEST.json"}
    assert not opened & {str((out / k).resolve()) for k in r["v1_files"]}
    assert any(p.startswith(str(Path(r["v2"]).resolve()) + "/part-") for p in opened)  # the new crawl was read
    assert {k: (out / k).stat().st_mtime_ns for k in r["v1_files"]} == r["v1_files"]  # nor rewritten
    # the manifest lists every part (v1's carried from the index) and they verify, sha256 included
    from gpt2ja.infra.stage import verify

    assert verify(str(out), second["fingerprint"], deep=True)[1] == []
    chain = read_chain(str(index))
    assert chain.number == 2 and chain.latest["parts"] == list(range(5, 13)) and chain.latest["next_part"] == 13
    assert chain.latest["counts"]["documents"] == len(r["fresh"])


def _ids_of(manifest: dict, out: Path) -> set[str]:
    """The ids in the corpus parts a manifest lists (read from the corpus as it is now)."""
    paths = [str(out / f["path"]) for f in manifest["files"] if f["path"].endswith(".jsonl.gz")]
    return {d.id for d in read_documents(paths)}


def test_the_refresh_keeps_what_a_clean_from_scratch_keeps(refreshed):
    r = refreshed
    assert _ids(r["out"]) == _ids(r["root"] / "scratch")
    # the same part names and the same bytes: the index numbered the new parts after version 1's
    assert _splits(r["out"]) == _splits(r["root"] / "scratch")
    assert r["second"]["counts"]["drops"] == r["scratch"]["counts"]["drops"]
    assert r["second"]["counts"]["splits"] == r["scratch"]["counts"]["splits"]


def test_an_unchanged_refresh_skips_and_a_lost_corpus_manifest_is_rewritten_from_the_index(refreshed, capsys):
    r = refreshed
    out = r["out"]
    again = _clean([r["v1"], r["v2"]], out, INDEXED)
    assert again["build_id"] == r["second"]["build_id"] and "skipped" in capsys.readouterr().err
    (out / "_MANIFEST.json").unlink()  # as a kill between the index's publish and the corpus's leaves it
    with Opened() as opened:
        rebuilt = _clean([r["v1"], r["v2"]], out, INDEXED)
    assert not [p for p in opened.paths if p.endswith(".jsonl.gz")]  # no text read: all from the index
    assert (rebuilt["dedup_index"]["produced"], rebuilt["dedup_index"]["documents_read"]) == ("v2", 0)
    # the same files, report included (what that clean found is kept in the index version it made)
    assert rebuilt["files"] == r["second"]["files"]
    assert (rebuilt["counts"], rebuilt["dedup"]) == (r["second"]["counts"], r["second"]["dedup"])
    assert read_chain(str(r["root"] / "dedup-index" / "lib")).number == 2  # no new version


@pytest.mark.slow
def test_an_index_build_interrupted_midway_is_rebuilt_and_equals_an_uninterrupted_one(crawls, refreshed, tmp_path):
    root, v1, v2, _ = crawls
    out = tmp_path / "clean" / "lib"
    # version 1's raw parts are gone (the module fixture deleted them): rebuild them into a copy of the crawl
    copy = raw_crawl(tmp_path, "lib", parts_of([work(p) for p in ZIPS[0::2]]))
    _clean([copy], out, INDEXED)
    with pytest.raises(RuntimeError, match="interrupted at index-runs"):
        _clean([copy, v2], out, INDEXED, mapper=InProcess(fail_on="index-runs-bands004"))
    partial = tmp_path / "dedup-index" / "lib" / "v2"
    assert (partial / "records").is_dir() and not (partial / "_MANIFEST.json").exists()
    assert not (out / "_MANIFEST.json").exists()
    assert read_chain(str(tmp_path / "dedup-index" / "lib")).number == 1  # the unfinished v2 is not used
    resumed = InProcess()
    done = _clean([copy, v2], out, INDEXED, mapper=resumed)
    assert not [n for n in resumed.names if n.startswith("filter-")]  # phase 1 had finished: resumed
    assert done["dedup_index"]["produced"] == "v2"
    assert _splits(out) == _splits(refreshed["out"])
    chain = read_chain(str(tmp_path / "dedup-index" / "lib"))
    for name in ("band000", "exact", "ids"):  # the same index rows as the uninterrupted build
        ours = (tmp_path / "dedup-index" / "lib" / "v2" / "runs" / f"{name}.rows").read_bytes()
        assert ours == (refreshed["root"] / "dedup-index" / "lib" / "v2" / "runs" / f"{name}.rows").read_bytes()
    assert chain.latest["counts"] == read_chain(str(refreshed["root"] / "dedup-index" / "lib")).latest["counts"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
@pytest.mark.slow
def test_a_damaged_index_version_is_one_line_naming_it(crawls, tmp_path, damage):
    root, v1, v2, _ = crawls
    copy = raw_crawl(tmp_path, "lib", parts_of([work(p) for p in ZIPS[0::2]]))
    out = tmp_path / "clean" / "lib"
    _clean([copy], out, INDEXED)
    v1_dir = tmp_path / "dedup-index" / "lib" / "v1"
    victim = v1_dir / "runs" / "band003.rows"
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[:-24])
    elif damage == "flip":  # same size: only the checksum tells
        victim.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        victim.unlink()
    with pytest.raises(DedupIndexError) as err:
        _clean([copy, v2], out, INDEXED)
    one_line_error(err, str(v1_dir), "band003.rows", "damaged", "delete")
    assert not (tmp_path / "dedup-index" / "lib" / "v2").exists()
    assert storage.read_manifest(str(out))["dedup_index"]["produced"] == "v1"  # the corpus stays as it was


def test_the_index_refuses_what_it_cannot_honour(crawls, refreshed, tmp_path):
    r = refreshed
    published = storage.read_manifest(str(r["out"]))["build_id"]
    with pytest.raises(ValidationError, match="index needs engine: sharded"):
        CleanConfig(inputs=[], out="x", dedup={"index": "auto"})
    with pytest.raises(DedupIndexError) as err:
        _clean([r["v2"]], tmp_path / "corpus", INDEXED)  # not {root}/clean/{corpus}
    one_line_error(err, "dedup.index auto", str(tmp_path / "corpus"))
    with pytest.raises(CleanError) as err:  # a setting that decides what a document becomes changed
        _clean([r["v1"], r["v2"]], r["out"], {**INDEXED, "threshold": 0.72, "bands": 16, "rows": 8})
    one_line_error(err, "dedup.threshold: 0.7 → 0.72", "delete")
    with pytest.raises(CleanError) as err:  # a crawl the index holds left the inputs
        _clean([r["v2"]], r["out"], INDEXED)
    one_line_error(err, r["v1"], "is not among the inputs")
    assert json.loads((r["out"] / "_MANIFEST.json").read_text())["build_id"] == published  # refused: nothing changed


# ----------------------------------------------------------------- the corpus-refresh flow, and Dask


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    from tests import procs

    with prefect_test_harness(server_startup_timeout=procs.STARTUP_LIMIT_S):
        yield


@pytest.mark.slow
def test_corpus_refresh_with_the_index_cleans_only_the_new_crawl(prefect_harness, tmp_path):
    """A ``files`` crawl is read whole at every refresh: its old files come back as ``duplicate_id``."""
    import shutil

    from gpt2ja.flows.config import PipelineConfig
    from gpt2ja.flows.refresh import corpus_refresh

    folder = tmp_path / "texts"
    folder.mkdir()
    for z in ZIPS[:12]:
        shutil.copy(z, folder / z.name)
    config = PipelineConfig.model_validate(
        {
            "root": str(tmp_path / "run"),
            "corpus": "mine",
            "tokenizer_name": "sp",
            "dataset": "sp-128",
            "crawl": [{"source": "files", "directory": str(folder), "crawl_id": "mine", "part_docs": 4}],
            "clean": {"workers": 1, "dedup": INDEXED},
            "tokenizer": {"kind": "sentencepiece", "vocab_size": 3000},
            "shards": {"seq_len": 128},
        }
    )
    first = corpus_refresh(config, refresh_id="r1")
    assert first["dedup_index"]["produced"] == "v1" and first["documents_after"] == 12

    for z in ZIPS[:4]:  # four works again under other names, and six new ones
        shutil.copy(z, folder / f"copy-{z.name}")
    for z in ZIPS[12:18]:
        shutil.copy(z, folder / z.name)
    base = Path(config.root, "raw", "files", "mine")
    for part in base.glob("part-*.jsonl.gz"):  # the base crawl's text is gone: only its manifest is left
        part.unlink()
    second = corpus_refresh(config, refresh_id="r2")
    refresh = str(Path(config.root, "raw", "files", "mine.refresh-r2"))
    assert [c["uri"] for c in second["crawl"]] == [refresh]
    info = second["dedup_index"]
    assert (info["against"], info["produced"], info["documents_read"]) == ("v1", "v2", 22)
    assert second["documents_after"] == second["documents_before"] + 6 == 18
    drops = storage.read_manifest(config.clean_uri)["dedup"]
    assert (drops["exact_duplicate"], drops["kept"]) == (4, 6)
    assert storage.read_manifest(config.clean_uri)["counts"]["drops"]["duplicate_id"] == 12


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.mark.slow
def test_an_indexed_refresh_on_dask_writes_the_same_bytes(refreshed, dask_client, tmp_path):
    r = refreshed
    ran: list[str] = []

    def on_dask(fn, items, names):
        ran.extend(names)
        return dask_client.gather(dask_client.map(fn, items, key=[f"{n}-{id(items)}" for n in names]))

    copy = raw_crawl(tmp_path, "lib", parts_of([work(p) for p in ZIPS[0::2]]))
    out = tmp_path / "clean" / "lib"
    _clean([copy], out, INDEXED, mapper=on_dask)
    _clean([copy, r["v2"]], out, INDEXED, mapper=on_dask)
    assert {n.rsplit("-", 1)[0] for n in ran} >= {"dedup-verify", "index-records", "index-runs-bands000"}
    assert _splits(out) == _splits(r["out"])
    for name in ("v1", "v2"):
        ours = outputs(str(tmp_path / "dedup-index" / "lib" / name))
        theirs = outputs(str(r["root"] / "dedup-index" / "lib" / name))
        assert sorted(ours) == sorted(theirs)
        assert [k for k in ours if ours[k] != theirs[k]] == ["_MANIFEST.json"]  # its timings, build id, refs


@pytest.mark.slow
def test_a_refresh_killed_before_its_index_version_is_built_ends_as_an_uninterrupted_one(refreshed, tmp_path):
    """The CLI, held inside the index version's stage (lock taken, corpus parts written), is SIGKILLed."""
    import os
    import subprocess
    import time

    from tests import procs

    copy = raw_crawl(tmp_path, "lib", parts_of([work(p) for p in ZIPS[0::2]]))
    out = tmp_path / "clean" / "lib"
    _clean([copy], out, INDEXED)
    gate = tmp_path / "gate"
    cmd = [
        sys.executable,
        "-m",
        "gpt2ja",
        "clean",
        "--in",
        copy,
        "--in",
        refreshed["v2"],
        "--out",
        str(out),
        "--workers",
        "1",
        "--set",
        "dedup.engine=sharded",
        "--set",
        "dedup.index=auto",
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "GPT2JA_STAGE_HOLD": f"dedup-index={gate}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        while not Path(f"{gate}.held").exists():  # the stage says when it holds
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
    finally:
        procs.kill_group(proc)
    index = tmp_path / "dedup-index" / "lib"
    assert (out / "train" / "part-00008.jsonl.gz").exists() and not (out / "_MANIFEST.json").exists()
    assert not (index / "v2" / "_MANIFEST.json").exists() and read_chain(str(index)).number == 1
    done = procs.run(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dedup index v1 → v2: 39 documents read from 1 new crawl(s)" in done.stdout
    assert _splits(out) == _splits(refreshed["out"])
    from gpt2ja.infra.stage import verify

    assert verify(str(out), deep=True)[1] == [] and verify(str(index / "v2"), deep=True)[1] == []


def _crawl_at(root: str, name: str, parts: list[list[Document]]) -> str:
    """A raw crawl (parts and manifest) at ``{root}/raw/aozora/{name}``, local or ``gs://``."""
    from gpt2ja.corpus.jsonl import ShardWriter, list_parts

    out = storage.join(root, "raw", "aozora", name)
    for i, docs in enumerate(parts):
        with ShardWriter(out, start_index=i) as w:
            for d in docs:
                w.write(d)
    files = [storage.file_info(u) for u in list_parts(out)]
    storage.write_manifest(
        out, storage.build_manifest(stage="crawl", config={"name": name}, counts={}, files=files, timings={})
    )
    return out


@pytest.mark.slow
def test_the_index_on_a_bucket_gives_the_local_result(storage_root, refreshed):
    """The same refresh under ``gs://`` (the storage emulator) and locally: the same corpus parts."""
    from gpt2ja.corpus.jsonl import read_documents as read

    v1 = _crawl_at(storage_root, "lib", parts_of([work(p) for p in ZIPS[0::2]]))
    v2 = _crawl_at(storage_root, "lib.refresh-r2", parts_of(list(read(refreshed["v2"]))))
    out = storage.join(storage_root, "clean", "lib")
    _clean([v1], out, INDEXED)
    manifest = _clean([v1, v2], out, INDEXED)
    assert (manifest["dedup_index"]["produced"], manifest["dedup_index"]["documents_read"]) == ("v2", 39)
    for f in manifest["files"]:
        if f["path"].endswith(".jsonl.gz"):
            assert storage.read_bytes(storage.join(out, f["path"])) == (refreshed["out"] / f["path"]).read_bytes()
    assert read_chain(storage.join(storage_root, "dedup-index", "lib")).number == 2

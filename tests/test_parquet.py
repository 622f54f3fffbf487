"""``gpt2ja export parquet``: a clean corpus as Parquet, read back by `datasets` and DuckDB."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import ShardWriter
from gpt2ja.corpus.parquet import COLUMNS, ParquetConfig, ParquetError, export_parquet
from gpt2ja.infra import storage
from tests import procs

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

GPT2JA = [str(Path(sys.executable).with_name("gpt2ja"))]
NAMES = [name for name, _ in COLUMNS]


def doc(title: str, text: str, **kwargs) -> Document:
    kwargs.setdefault("fetched_at", "2026-11-01T00:00:00Z")
    return Document.new(
        source=kwargs.pop("source", "aozora"),
        url=f"https://www.aozora.gr.jp/works/{title}",
        title=title,
        text=text,
        **kwargs,
    )


# As the clean stage lays a corpus out: train/ and validation/ parts numbered after the raw part they came
# from (a split that got nothing from a part skips its number), a report, and counts per split.
LAYOUT = {
    "train": {
        0: [
            doc(
                "羅生門",
                "ある日の暮方の事である。\n一人の下人が、羅生門の下で雨やみを待っていた。\n",
                author="芥川 竜之介",
                meta={"clean": {"preset": "literature", "chars_raw": 40}},
            ),
            doc(
                "絵文字",
                "𠮷野家で🍣を食べた。\u3000全角空白と「括弧」。",
                license="CC BY 4.0",
                meta={"tags": ["a", "い"], "n": 1.5, "ok": True, "none": None},
            ),
        ],
        2: [doc("空", "", author="", fetched_at="", source="web")],
    },
    "validation": {
        1: [doc("ごん狐", "これは、私が小さいときに、村の茂平というおじいさんからきいたお話です。", author="新美 南吉")]
    },
}


def write_corpus(uri: str, layout: dict = LAYOUT) -> str:
    for split, parts in layout.items():
        for index, docs in parts.items():
            with ShardWriter(storage.join(uri, split), start_index=index) as w:
                for d in docs:
                    w.write(d)
    storage.write_text(storage.join(uri, "report.md"), "# report\n")
    files = [storage.file_info(u, root=uri) for u in storage.list_files(uri)]
    splits = {
        s: {
            "documents": sum(len(d) for d in parts.values()),
            "characters": sum(len(x.text) for d in parts.values() for x in d),
        }
        for s, parts in layout.items()
    }
    storage.write_manifest(
        uri,
        storage.build_manifest(stage="clean", config={"test": uri}, files=files, counts={"splits": splits}, timings={}),
    )
    return uri


def documents(split: str) -> list[Document]:
    return [d for _, docs in sorted(LAYOUT[split].items()) for d in docs]


@pytest.fixture
def exported(tmp_path):
    corpus = write_corpus(str(tmp_path / "clean" / "ja"))
    out = str(tmp_path / "export" / "ja-parquet")
    uri, did = export_parquet(ParquetConfig(corpus=corpus, out=out), log=lambda line: None)
    assert did == {"skipped": False, "built": 3, "reused": 0}
    return corpus, out


def contents(out: str) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}


def test_one_file_per_part_with_the_fixed_schema(exported):
    corpus, out = exported
    files = sorted(str(p.relative_to(out)) for p in Path(out).rglob("*.parquet"))
    assert files == ["train/part-00000.parquet", "train/part-00002.parquet", "validation/part-00001.parquet"]
    for name in files:
        sch = pq.read_schema(Path(out) / name)
        assert sch.names == NAMES
        assert all(f.type == pa.string() and not f.nullable for f in sch)
        assert json.loads(sch.metadata[b"gpt2ja"])["corpus_part"] == name.replace(".parquet", ".jsonl.gz")
    manifest = storage.read_manifest(out)
    assert manifest["stage"] == "parquet"
    assert [c["name"] for c in manifest["schema"]] == NAMES
    assert manifest["counts"]["splits"]["train"] == {
        "documents": 3,
        "characters": sum(len(d.text) for d in documents("train")),
        "files": 2,
    }
    assert manifest["inputs"][0]["uri"] == "../../clean/ja"  # relative: the root can move


def test_datasets_reads_it_offline(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    _, out = exported
    ds = datasets.load_dataset(
        "parquet",
        data_files={s: f"{out}/{s}/*.parquet" for s in ("train", "validation")},
        cache_dir=str(tmp_path / "hf" / "datasets"),
    )
    for split in ("train", "validation"):
        want = documents(split)
        got = ds[split]
        assert list(got.features) == NAMES
        assert all(f == datasets.Value("string") for f in got.features.values())
        assert got.num_rows == len(want)
        assert [r["text"].encode("utf-8") for r in got] == [d.text.encode("utf-8") for d in want]
        assert [json.loads(r["meta"]) for r in got] == [d.meta for d in want]
        assert [(r["id"], r["title"], r["author"], r["license"], r["fetched_at"], r["split"]) for r in got] == [
            (d.id, d.title, d.author, d.license, d.fetched_at, split) for d in want
        ]


def test_duckdb_reads_it(exported):
    duckdb = pytest.importorskip("duckdb")
    _, out = exported
    con = duckdb.connect()
    rel = f"read_parquet('{out}/*/*.parquet')"
    described = con.sql(f"DESCRIBE SELECT * FROM {rel}").fetchall()
    assert [(r[0], r[1]) for r in described] == [(n, "VARCHAR") for n in NAMES]
    assert dict(con.sql(f"SELECT split, count(*) FROM {rel} GROUP BY split").fetchall()) == {
        "train": 3,
        "validation": 1,
    }
    rows = con.sql(f"SELECT id, text, meta FROM {rel}").fetchall()
    want = {d.id: d for s in ("train", "validation") for d in documents(s)}
    assert len(rows) == len(want)
    for doc_id, text, meta in rows:
        assert text.encode("utf-8") == want[doc_id].text.encode("utf-8")
        assert json.loads(meta) == want[doc_id].meta
    assert con.sql(f"SELECT meta->>'$.tags[1]' FROM {rel} WHERE title = '絵文字'").fetchall() == [("い",)]


def test_rerun_skips_and_an_interrupted_export_resumes_per_part(exported):
    corpus, out = exported
    before = contents(out)
    cfg = ParquetConfig(corpus=corpus, out=out)
    assert export_parquet(cfg, log=lambda line: None)[1] == {"skipped": True}
    assert contents(out) == before
    # as if killed after two parts: no manifest, one file gone
    (Path(out) / "_MANIFEST.json").unlink()
    (Path(out) / "train" / "part-00002.parquet").unlink()
    assert export_parquet(cfg, log=lambda line: None)[1] == {"skipped": False, "built": 1, "reused": 2}
    after = contents(out)
    assert {k: v for k, v in after.items() if k != "_MANIFEST.json"} == {
        k: v for k, v in before.items() if k != "_MANIFEST.json"
    }  # byte-identical files


def test_a_rebuilt_corpus_is_exported_again_and_options_change_the_fingerprint(exported):
    corpus, out = exported
    _, did = export_parquet(ParquetConfig(corpus=corpus, out=out, compression="none"), log=lambda line: None)
    assert did["built"] == 3
    assert (
        pq.ParquetFile(Path(out) / "validation" / "part-00001.parquet").metadata.row_group(0).column(0).compression
        == "UNCOMPRESSED"
    )
    shutil.rmtree(corpus)  # `gpt2ja clean` again, with other results
    write_corpus(corpus, {"train": {0: [doc("鼻", "禅智内供の鼻と云えば、池の尾で知らない者はない。")]}})
    _, did = export_parquet(ParquetConfig(corpus=corpus, out=out, compression="none"), log=lambda line: None)
    assert did["built"] == 1  # the corpus's manifest changed: its fingerprint is part of the export's
    assert sorted(p.name for p in Path(out).rglob("*.parquet")) == ["part-00000.parquet"]  # old parts pruned


def test_counts_that_disagree_with_the_corpus_manifest_publish_nothing(tmp_path):
    corpus = write_corpus(str(tmp_path / "clean"))
    manifest = storage.read_manifest(corpus)
    manifest["counts"]["splits"]["train"]["documents"] = 99
    storage.write_manifest(corpus, manifest)
    out = tmp_path / "pq"
    with pytest.raises(ParquetError, match="counts 99 documents in train"):
        export_parquet(ParquetConfig(corpus=corpus, out=str(out)), log=lambda line: None)
    assert not (out / "_MANIFEST.json").exists()


@pytest.mark.slow
def test_gcs(gcs_emulator, tmp_path):
    import uuid

    root = f"gs://{gcs_emulator.bucket}/pq-{uuid.uuid4().hex[:8]}"
    corpus = write_corpus(f"{root}/clean/ja")
    out = f"{root}/export/ja"
    assert export_parquet(ParquetConfig(corpus=corpus, out=out), log=lambda line: None)[1]["built"] == 3
    assert export_parquet(ParquetConfig(corpus=corpus, out=out), log=lambda line: None)[1] == {"skipped": True}
    local = tmp_path / "down"
    storage.download_dir(out, str(local))
    table = pq.read_table(local / "train" / "part-00000.parquet")
    assert table.column("text").to_pylist() == [d.text for d in LAYOUT["train"][0]]
    assert storage.read_manifest(out)["counts"]["documents"] == 4


def gpt2ja(*args: str) -> subprocess.CompletedProcess:
    return procs.run(GPT2JA + list(args))


@pytest.mark.slow
def test_cli_exports_and_a_bad_corpus_is_one_clear_line(tmp_path):
    corpus = write_corpus(str(tmp_path / "clean"))
    got = gpt2ja("export", "parquet", "--corpus", corpus, "--out", str(tmp_path / "pq"), "--compression", "snappy")
    assert got.returncode == 0, got.stderr
    assert "4 documents (train 3, validation 1) in 3 Parquet files" in got.stdout
    assert storage.read_manifest(str(tmp_path / "pq"))["config"]["compression"] == "snappy"

    (tmp_path / "nothing").mkdir()
    for bad in (str(tmp_path / "nothing"), str(tmp_path / "pq")):  # no manifest; a parquet export, not a corpus
        got = gpt2ja("export", "parquet", "--corpus", bad, "--out", str(tmp_path / "pq2"))
        assert got.returncode == 1
        lines = got.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and bad in lines[0], got.stderr
    assert (
        "has no _MANIFEST.json"
        in gpt2ja("export", "parquet", "--corpus", str(tmp_path / "nothing"), "--out", str(tmp_path / "pq2")).stderr
    )
    got = gpt2ja("export", "parquet", "--corpus", corpus, "--out", str(tmp_path / "pq3"), "--compression", "lz9")
    assert got.returncode == 1 and len(got.stderr.strip().splitlines()) == 1 and "compression" in got.stderr


def test_missing_pyarrow_is_one_line(tmp_path, monkeypatch, capsys):
    from gpt2ja.cli import main

    corpus = write_corpus(str(tmp_path / "clean"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow → ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SystemExit) as exit_:
        main(["export", "parquet", "--corpus", corpus, "--out", str(tmp_path / "pq")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs pyarrow" in err[0] and "pip install" in err[0]


def test_cli_options_default_to_the_config_model():
    import typer.main

    from gpt2ja.cli import app

    cmd = typer.main.get_command(app).commands["export"].commands["parquet"]
    params = {p.name: p.default for p in cmd.params}
    assert set(params) == set(ParquetConfig.model_fields) | {"config", "sets"}  # --config and --set: every stage's
    assert all(params[k] is None for k in ("compression", "row_group_docs"))
    helps = {p.name: p.help for p in cmd.params}  # the defaults the help names are the model's
    assert f"[default: {ParquetConfig.model_fields['compression'].default}]" in helps["compression"]
    assert f"[default: {ParquetConfig.model_fields['row_group_docs'].default}]" in helps["row_group_docs"]

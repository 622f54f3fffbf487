"""The clean stage end to end: raw shards in, deduplicated train/validation corpus out."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from gpt2ja.corpus.clean import CleanConfig, CleanError, run_clean
from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import ShardWriter, list_parts, read_documents
from gpt2ja.corpus.split import SplitConfig, split_of
from gpt2ja.crawler.extract.aozora import from_zip
from gpt2ja.infra import storage
from tests.conftest import MIRROR

FILES = MIRROR / "cards"
WORKS = {  # title: (zip path, author)
    "羅生門": ("000879/files/127_ruby_150.zip", "芥川 竜之介"),
    "鼻": ("000879/files/42_ruby_154.zip", "芥川 竜之介"),
    "蜘蛛の糸": ("000879/files/92_ruby_164.zip", "芥川 竜之介"),
    "ごん狐": ("000121/files/628_ruby_649.zip", "新美 南吉"),
    "手袋を買いに": ("000121/files/637_ruby_4095.zip", "新美 南吉"),
    "よだかの星": ("000081/files/473_ruby_467.zip", "宮沢 賢治"),
    "〔雨ニモマケズ〕": ("000081/files/45630_txt_23610.zip", "宮沢 賢治"),
}


def work_text(title: str) -> str:
    path = FILES / WORKS[title][0]
    return from_zip(path.read_bytes(), path.name).text


def doc(
    title: str,
    text: str | None = None,
    *,
    source="aozora",
    url=None,
    fetched_at="2026-11-01T00:00:00Z",
    author=None,
    meta=None,
) -> Document:
    d = Document.new(
        source=source,
        url=url or f"https://www.aozora.gr.jp/works/{title}",
        title=title,
        author=author if author is not None else WORKS.get(title, ("", "作者不詳"))[1],
        text=text if text is not None else work_text(title),
        fetched_at=fetched_at,
        meta={"aozora_notation_removed": True, **(meta or {})},
    )
    return d


def raw_crawl(root: Path, name: str, parts: list[list[Document]], source="aozora") -> str:
    """A raw crawl directory with a manifest, as the crawl stage writes it."""
    out = str(root / "raw" / source / name)
    for i, docs in enumerate(parts):
        w = ShardWriter(out, start_index=i)
        for d in docs:
            w.write(d)
        if not docs:  # an empty part: a gzip stream with no line
            with gzip.GzipFile(Path(out) / f"part-{i:05d}.jsonl.gz", "wb", mtime=0):
                pass
        w.close()
    files = [storage.file_info(u) for u in list_parts(out)]
    storage.write_manifest(
        out, storage.build_manifest(stage="crawl", config={"name": name}, counts={}, files=files, timings={})
    )
    return out


def outputs(out: str) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def literature(tmp_path_factory):
    root = tmp_path_factory.mktemp("lit")
    titles = list(WORKS)
    raw = raw_crawl(root, "c1", [[doc(t) for t in titles[:4]], [doc(t) for t in titles[4:]]])
    cfg = CleanConfig(inputs=[raw], out=str(root / "clean"), workers=2, split=SplitConfig(validation_fraction=0.3))
    run_clean(cfg)
    return root, raw, cfg


@pytest.mark.slow
def test_clean_keeps_literature_and_reports(literature):
    root, raw, cfg = literature
    manifest = storage.read_manifest(cfg.out)
    docs = list(read_documents([storage.join(cfg.out, "train"), storage.join(cfg.out, "validation")]))
    assert {d.title for d in docs} == set(WORKS)
    assert manifest["counts"]["documents_in"] == manifest["counts"]["documents_out"] == len(WORKS)
    assert manifest["stage"] == "clean" and manifest["counts"]["drops"] == {}
    report = Path(cfg.out, "report.md").read_text(encoding="utf-8")
    assert "| in | 7 |" in report and "lengths.png" in report
    assert Path(cfg.out, "lengths.png").read_bytes().startswith(b"\x89PNG")
    for d in docs:
        assert d.meta["clean"]["preset"] == "literature"
        assert "\uff5e" not in d.text  # the wave dash is 〜 after normalisation


def test_split_follows_the_id_hash(literature):
    _, _, cfg = literature
    for split in ("train", "validation"):
        for d in read_documents(storage.join(cfg.out, split)):
            assert split_of(d.id, d.author, d.url, cfg.split) == split


@pytest.mark.slow
def test_rerun_is_skipped_and_rebuild_is_byte_identical(literature, tmp_path):
    root, raw, cfg = literature
    before = outputs(cfg.out)
    run_clean(cfg)  # complete: skipped
    assert outputs(cfg.out) == before
    again = cfg.model_copy(update={"out": str(tmp_path / "again"), "workers": 1})
    run_clean(again)
    after = outputs(again.out)
    assert {k: v for k, v in after.items() if k != "_MANIFEST.json"} == {
        k: v for k, v in before.items() if k != "_MANIFEST.json"
    }


@pytest.mark.slow
def test_deleted_output_is_rebuilt(literature):
    _, _, cfg = literature
    part = list_parts(storage.join(cfg.out, "train"))[0]
    Path(cfg.out, "_MANIFEST.json").unlink()
    Path(part).unlink()
    run_clean(cfg)
    assert Path(part).exists() and storage.read_manifest(cfg.out) is not None


def test_split_is_stable_when_the_corpus_grows():
    cfg = SplitConfig(validation_fraction=0.2)
    ids = [f"{i:032x}" for i in range(2000)]
    first = {i: split_of(i, "", "", cfg) for i in ids[:1000]}
    grown = {i: split_of(i, "", "", cfg) for i in ids}
    assert all(grown[i] == s for i, s in first.items())
    share = sum(s == "validation" for s in grown.values()) / len(grown)
    assert 0.17 < share < 0.23
    held = SplitConfig(validation_fraction=0.0, holdout_authors=["宮沢 賢治"], holdout_sites=["example.jp"])
    assert split_of("x", "宮沢　賢治", "", held) == "validation"
    assert split_of("x", "", "https://example.jp/a", held) == "validation"
    assert split_of("x", "芥川 竜之介", "https://example.com/a", held) == "train"


@pytest.mark.slow
def test_cross_crawl_and_cross_source_duplicates(tmp_path):
    """A refresh crawled a month later (new URLs) and a user's copy: the oldest copy is kept, nothing doubles."""
    old = raw_crawl(tmp_path, "2026-10", [[doc("羅生門"), doc("鼻")]])
    sentences = work_text("鼻").split("。")
    edited = "。".join(s + ("、実に" if i % 25 == 0 else "") for i, s in enumerate(sentences))  # a few changes
    new = raw_crawl(
        tmp_path,
        "2026-11",
        [
            [
                doc("羅生門", url="https://mirror.example/rashomon", fetched_at="2026-11-20T00:00:00Z"),
                doc("鼻", edited, url="https://mirror.example/hana", fetched_at="2026-11-20T00:00:00Z"),
                doc("蜘蛛の糸", fetched_at="2026-11-20T00:00:00Z"),
                doc("鼻", fetched_at="2026-11-20T00:00:00Z"),
            ]
        ],
    )  # the same URL as in the old crawl: the same id
    mine = raw_crawl(
        tmp_path,
        "mine",
        [[doc("ごん狐", source="files", url="file:///home/u/gon.txt", fetched_at="2026-11-25T00:00:00Z")]],
        source="files",
    )
    cfg = CleanConfig(inputs=[new, old, mine], out=str(tmp_path / "clean"), workers=2)
    run_clean(cfg)
    docs = list(read_documents([storage.join(cfg.out, s) for s in ("train", "validation")]))
    assert sorted(d.title for d in docs) == sorted(["羅生門", "鼻", "蜘蛛の糸", "ごん狐"])
    kept = {d.title: d for d in docs}
    assert kept["羅生門"].fetched_at.startswith("2026-11-01") and kept["鼻"].fetched_at.startswith("2026-11-01")
    drops = storage.read_manifest(cfg.out)["counts"]["drops"]
    assert drops == {"exact_duplicate": 1, "near_duplicate": 1, "duplicate_id": 1}
    assert len({d.id for d in docs}) == len(docs)
    report = Path(cfg.out, "report.md").read_text(encoding="utf-8")
    assert "Largest duplicate clusters" in report and "鼻" in report


@pytest.mark.slow
def test_bad_inputs_are_counted_never_fatal(tmp_path):
    ok = doc("蜘蛛の糸")
    unclosed = doc(
        "壊れた注記",
        "　これは《ルビの閉じていない文章です。" + work_text("ごん狐")[:400],
        meta={"aozora_notation_removed": False},
        author="作者不詳",
    )
    all_notes = doc(
        "注記だけ",
        "［＃ここから２字下げ］\n［＃ここで字下げ終わり］\n［＃改ページ］\n",
        meta={"aozora_notation_removed": False},
        author="作者不詳",
    )
    english = doc(
        "English",
        "This is an English text that is long enough to pass the length filter. " * 20,
        source="web",
        url="https://example.com/en",
        author="",
    )
    raw = raw_crawl(tmp_path, "bad", [[ok, unclosed, all_notes, english], [], [doc("ごん狐")]])
    # a corrupted JSON line in part 0, and part 2 truncated in the middle of its gzip stream
    p0 = Path(raw, "part-00000.jsonl.gz")
    lines = gzip.decompress(p0.read_bytes()).split(b"\n")
    lines.insert(1, b'{"id": "broken", "text": ')
    p0.write_bytes(gzip.compress(b"\n".join(lines), mtime=0))
    p2 = Path(raw, "part-00002.jsonl.gz")
    p2.write_bytes(p2.read_bytes()[: len(p2.read_bytes()) // 2])

    cfg = CleanConfig(inputs=[raw], out=str(tmp_path / "clean"), workers=2)
    run_clean(cfg)
    counts = storage.read_manifest(cfg.out)["counts"]
    docs = list(read_documents([storage.join(cfg.out, s) for s in ("train", "validation")]))
    assert [d.title for d in docs] == ["蜘蛛の糸"]
    assert counts["drops"]["bad_json_line"] == 1
    assert counts["drops"]["truncated_shard"] == 1
    assert counts["drops"]["empty_shard"] == 1
    assert counts["drops"]["malformed_notation"] == 1
    assert counts["drops"]["empty_after_cleaning"] == 1
    assert any(r in counts["drops"] for r in ("low_japanese_ratio", "low_hiragana_ratio"))


@pytest.mark.slow
def test_a_clean_that_drops_every_document_fails_unless_allowed(tmp_path):
    english = doc(
        "English",
        "This is an English text that is long enough to pass the length filter. " * 20,
        source="web",
        url="https://example.com/en",
        author="",
    )
    raw = raw_crawl(tmp_path, "en", [[english]], source="web")
    cfg = CleanConfig(inputs=[raw], out=str(tmp_path / "clean"), workers=1)
    with pytest.raises(CleanError) as err:
        run_clean(cfg)
    message = str(err.value)
    assert "all 1 documents were dropped" in message and "allow_empty" in message and "\n" not in message
    assert storage.read_manifest(cfg.out) is None
    run_clean(cfg.model_copy(update={"allow_empty": True}))  # asked for: published, empty, with its drops
    assert storage.read_manifest(cfg.out)["counts"]["documents_out"] == 0


def test_missing_input_manifest_is_one_clear_error(tmp_path):
    raw = str(tmp_path / "raw" / "aozora" / "partial")
    with ShardWriter(raw) as w:
        w.write(doc("鼻"))
    with pytest.raises(CleanError, match="has no _MANIFEST.json"):
        run_clean(CleanConfig(inputs=[raw], out=str(tmp_path / "clean")))
    assert not Path(tmp_path / "clean" / "_MANIFEST.json").exists()


@pytest.mark.slow
def test_interrupted_clean_resumes_per_shard(tmp_path):
    raw = raw_crawl(tmp_path, "r", [[doc("羅生門")], [doc("鼻")], [doc("ごん狐")]])
    cfg = CleanConfig(inputs=[raw], out=str(tmp_path / "clean"), workers=1)
    # simulate a first run that finished phase 1 for part 0 only
    from gpt2ja.corpus.clean_parts import process_part, work_dir

    fp_files = json.dumps([[f["sha256"] for f in storage.read_manifest(raw)["files"]]])
    import hashlib

    content = hashlib.sha256(fp_files.encode()).hexdigest()
    fp = storage.fingerprint({**cfg.fingerprint_config(), "inputs_content": content}, [storage.read_manifest(raw)])
    work = work_dir(cfg, fp)
    process_part((0, list_parts(raw)[0], cfg.model_dump_json(), work))
    # Mark part 0's completion record: if the rerun reuses it, the mark shows in the totals.
    record = Path(work, "done00000.json")
    data = json.loads(record.read_text())
    data["docs_in"] += 1000
    record.write_text(json.dumps(data))
    run_clean(cfg)
    counts = storage.read_manifest(cfg.out)["counts"]
    assert counts["documents_out"] == 3 and counts["parts_in"] == 3
    assert counts["documents_in"] == 1003  # part 0 was not processed again
    assert not Path(work).exists()  # the work area is removed once the corpus is published

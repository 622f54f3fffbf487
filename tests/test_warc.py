"""The ``warc`` source: WARC and WET files, written here with warcio itself, become raw Documents.

The archives hold what a real crawl archive holds: Japanese pages in UTF-8 and,
without any charset label, in Shift_JIS and EUC-JP; English and Chinese pages; a
404; an image; request and warcinfo records; a malformed record and a gzip member
cut short at the end of the file; and a WET file of text conversions.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.crawler.warc import WarcConfig, WarcError, crawl_warc, expand_paths
from gpt2ja.infra import storage
from tests import procs

REPO = Path(__file__).resolve().parent.parent
GPT2JA = [str(Path(sys.executable).with_name("gpt2ja"))]

UTF8_TEXT = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
    "ニャーニャー泣いていた事だけは記憶している。吾輩はここで始めて人間というものを見た。"
)
SJIS_TEXT = (
    "ある日の暮方の事である。一人の下人が、羅生門の下で雨やみを待っていた。広い門の下には、この男のほかに"
    "誰もいない。ただ、所々丹塗の剥げた、大きな円柱に、蟋蟀が一匹とまっている。"
)
EUC_TEXT = (
    "親譲りの無鉄砲で小供の時から損ばかりしている。小学校に居る時分学校の二階から飛び降りて一週間ほど"
    "腰を抜かした事がある。なぜそんな無闇をしたと聞く人があるかも知れぬ。"
)
ENGLISH_TEXT = (
    "It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin "
    "nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass doors."
)
CHINESE_TEXT = (
    "天下大势，分久必合，合久必分。周末七国分争，并入于秦。及秦灭之后，楚、汉分争，又并入于汉。"
    "汉朝自高祖斩白蛇而起义，一统天下，后来光武中兴，传至献帝，遂分为三国。"
)
MALFORMED = b"this is not a WARC record\r\n\r\n"
WET_TEXT = (
    "山路を登りながら、こう考えた。智に働けば角が立つ。情に棹させば流される。"
    "意地を通せば窮屈だ。とかくに人の世は住みにくい。"
)


def page(text: str, title: str) -> str:
    return (
        f"<html><head><title>{title}</title></head><body><nav><a href='/'>home</a></nav>"
        f"<article><h1>{title}</h1><p>{text}</p><p>{text}</p></article><footer>footer</footer></body></html>"
    )


def _member(write) -> bytes:
    """The bytes of the records ``write(writer)`` writes, one gzip member each."""
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    write(WARCWriter(buf, gzip=True))
    return buf.getvalue()


def _response(writer, url: str, body: bytes, content_type: str | None, status: str = "200 OK", date: str = ""):
    from warcio.statusandheaders import StatusAndHeaders

    headers = [("Content-Type", content_type)] if content_type else []
    record = writer.create_warc_record(
        url,
        "response",
        payload=io.BytesIO(body),
        http_headers=StatusAndHeaders(status, headers + [("Content-Length", str(len(body)))], protocol="HTTP/1.1"),
        warc_headers_dict={
            "WARC-Date": date or "2024-03-01T12:00:00Z",
            "WARC-Record-ID": f"<urn:uuid:00000000-0000-0000-0000-{abs(hash(url)) % 10**12:012d}>",
        },
    )
    writer.write_record(record)
    return record.rec_headers.get_header("WARC-Record-ID")


def _conversion(writer, url: str, text: str):
    record = writer.create_warc_record(
        url,
        "conversion",
        payload=io.BytesIO(text.encode("utf-8")),
        warc_headers_dict={"WARC-Date": "2024-03-02T00:00:00Z", "Content-Type": "text/plain"},
    )
    writer.write_record(record)


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict:
    """``{"warc": path, "wet": path, "ids": {url: WARC-Record-ID}}``: one WARC and one WET file."""
    d = tmp_path_factory.mktemp("archives")
    ids = {}

    def pages(writer):
        writer.write_record(writer.create_warcinfo_record("test.warc.gz", {"software": "tests"}))
        writer.write_record(
            writer.create_warc_record(
                "https://news.example.jp/a", "request", payload=io.BytesIO(b"GET /a HTTP/1.1\r\n\r\n")
            )
        )
        ids["utf8"] = _response(
            writer,
            "https://news.example.jp/a",
            page(UTF8_TEXT, "猫").encode("utf-8"),
            "text/html; charset=UTF-8",
            date="2024-03-01T12:00:01Z",
        )
        ids["sjis"] = _response(
            writer, "https://old.example.jp/rashomon.html", page(SJIS_TEXT, "羅生門").encode("cp932"), "text/html"
        )
        ids["euc"] = _response(
            writer, "https://old.example.jp/botchan.html", page(EUC_TEXT, "坊っちゃん").encode("euc_jp"), "text/html"
        )
        _response(writer, "https://example.com/en", page(ENGLISH_TEXT, "April").encode(), "text/html; charset=utf-8")
        _response(writer, "https://example.cn/zh", page(CHINESE_TEXT, "三国").encode(), "text/html; charset=utf-8")
        _response(
            writer,
            "https://news.example.jp/gone",
            b"<html><body>Not Found</body></html>",
            "text/html",
            status="404 Not Found",
        )
        _response(writer, "https://news.example.jp/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png")

    def after(writer):
        ids["after"] = _response(
            writer, "https://news.example.jp/b", page(WET_TEXT, "草枕").encode("utf-8"), "text/html; charset=utf-8"
        )

    malformed = gzip.compress(MALFORMED, mtime=0)
    last = _member(lambda w: _response(w, "https://news.example.jp/c", page(UTF8_TEXT, "c").encode(), "text/html"))
    warc = d / "crawl-00000.warc.gz"
    warc.write_bytes(_member(pages) + malformed + _member(after) + last[: len(last) // 2])

    def conversions(writer):
        writer.write_record(writer.create_warcinfo_record("test.warc.wet.gz", {"software": "tests"}))
        _conversion(writer, "https://blog.example.jp/1", WET_TEXT)
        _conversion(writer, "https://example.com/2", ENGLISH_TEXT)
        _conversion(writer, "https://blog.example.jp/3", "短い。")

    wet = d / "crawl-00000.warc.wet.gz"
    wet.write_bytes(_member(conversions))
    return {"warc": str(warc), "wet": str(wet), "dir": str(d), "ids": ids}


def in_process(fn, items, names):
    """A ``map_parts`` that runs each file here, in order (the flow's and the pool's work, without processes)."""
    in_process.calls.extend(names)
    return [fn(item) for item in items]


in_process.calls = []

DROPS = {"http_404": 1, "malformed_record": 1, "not_html": 1, "not_japanese": 3, "too_short": 1, "truncated_gzip": 1}


@pytest.fixture(scope="module")
def crawled(archives, tmp_path_factory) -> str:
    cfg = WarcConfig(paths=[archives["warc"], archives["wet"]], root=str(tmp_path_factory.mktemp("root")), crawl_id="t")
    return crawl_warc(cfg, map_parts=in_process)


def test_records_become_documents_and_every_drop_is_named(archives, crawled):
    docs = {d.meta["fetched_url"]: d for d in read_documents(crawled)}
    manifest = storage.read_manifest(crawled)
    assert manifest["counts"]["drops"] == DROPS
    assert manifest["counts"]["records"] == {"conversion": 3, "request": 1, "response": 8, "warcinfo": 2}
    assert manifest["counts"]["documents"] == len(docs) == 5
    assert set(docs) == {
        "https://news.example.jp/a",
        "https://old.example.jp/rashomon.html",
        "https://old.example.jp/botchan.html",
        "https://news.example.jp/b",
        "https://blog.example.jp/1",
    }
    utf8, sjis, euc = (
        docs[u]
        for u in (
            "https://news.example.jp/a",
            "https://old.example.jp/rashomon.html",
            "https://old.example.jp/botchan.html",
        )
    )
    assert UTF8_TEXT in utf8.text and (utf8.meta["encoding"], utf8.meta["encoding_source"]) == ("utf-8", "header")
    # no charset anywhere: detected among the Japanese encodings, as the web spider does
    assert SJIS_TEXT in sjis.text and sjis.meta["encoding"] in ("cp932", "shift_jis")
    assert EUC_TEXT in euc.text and euc.meta["encoding"] == "euc_jp"
    assert sjis.meta["encoding_source"] == euc.meta["encoding_source"] == "detected"
    assert (utf8.url, utf8.source, utf8.title, utf8.fetched_at) == (
        "https://news.example.jp/a",
        "web",
        "猫",
        "2024-03-01T12:00:01Z",
    )
    assert utf8.meta["warc_record_id"] == archives["ids"]["utf8"] and utf8.meta["warc_file"] == archives["warc"]
    assert euc.meta["warc_record_id"] == archives["ids"]["euc"]
    # the record after the malformed one is read (one gzip member per record: the damage stays in its member)
    assert docs["https://news.example.jp/b"].meta["warc_record_id"] == archives["ids"]["after"]
    wet = docs["https://blog.example.jp/1"]
    assert wet.text == WET_TEXT and wet.fetched_at == "2024-03-02T00:00:00Z" and wet.meta["warc_record_id"]
    # one part per input file, each with its completion record
    assert [f["path"] for f in manifest["files"]] == ["part-00000.jsonl.gz", "part-00001.jsonl.gz"]
    assert sorted(p.name for p in Path(crawled, "_work").iterdir()) == ["00000.json", "00001.json"]


def test_a_finished_crawl_is_skipped(archives, crawled, capsys):
    before = storage.read_manifest(crawled)
    in_process.calls.clear()
    cfg = WarcConfig(paths=[archives["warc"], archives["wet"]], root=str(Path(crawled).parents[2]), crawl_id="t")
    assert crawl_warc(cfg, map_parts=in_process) == crawled
    assert in_process.calls == [] and storage.read_manifest(crawled)["created_at"] == before["created_at"]
    assert "already complete" in capsys.readouterr().err


def test_an_interrupted_crawl_redoes_only_its_unfinished_files(archives, crawled, tmp_path):
    root = tmp_path / "root"
    out = root / "raw" / "warc" / "t"
    shutil.copytree(crawled, out)  # copy2: mtimes kept
    before = storage.read_manifest(str(out))
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # as if killed while reading the second file: no manifest, no completion record for file 1
    (out / "_MANIFEST.json").unlink()
    (out / "_work" / "00001.json").unlink()
    in_process.calls.clear()
    crawl_warc(
        WarcConfig(paths=[archives["warc"], archives["wet"]], root=str(root), crawl_id="t"), map_parts=in_process
    )
    assert in_process.calls == ["file-00001"]
    changed = {p.name for p in out.rglob("*") if p.is_file() and p.stat().st_mtime_ns != mtimes.get(p.name)}
    assert changed == {"_MANIFEST.json", "part-00001.jsonl.gz", "00001.json"}
    after = storage.read_manifest(str(out))
    assert after["counts"] == before["counts"] and after["files"] == before["files"]
    # a part damaged since its record was written is read again, never reused
    (out / "_MANIFEST.json").unlink()
    (out / "part-00000.jsonl.gz").write_bytes(b"damaged")
    in_process.calls.clear()
    crawl_warc(
        WarcConfig(paths=[archives["warc"], archives["wet"]], root=str(root), crawl_id="t"), map_parts=in_process
    )
    assert in_process.calls == ["file-00000"] and storage.read_manifest(str(out))["files"] == before["files"]


def test_uncompressed_archives_and_folders(archives, tmp_path):
    plain = tmp_path / "in" / "plain.warc"
    plain.parent.mkdir()
    whole = Path(archives["warc"]).read_bytes()
    plain.write_bytes(gzip.decompress(whole.split(gzip.compress(MALFORMED, mtime=0))[0]))  # the members before it
    (tmp_path / "in" / "notes.txt").write_text("not an archive")
    assert [p for p, _ in expand_paths([str(tmp_path / "in")])] == [str(plain)]  # only archives inside folders
    out = crawl_warc(
        WarcConfig(paths=[str(tmp_path / "in")], root=str(tmp_path / "root"), crawl_id="p"), map_parts=in_process
    )
    counts = storage.read_manifest(out)["counts"]
    assert counts["documents"] == 3 and counts["drops"] == {"http_404": 1, "not_html": 1, "not_japanese": 2}


@pytest.mark.parametrize(
    "paths, needle",
    [
        (["/no/such.warc.gz"], "/no/such.warc.gz: no such file or folder"),
        (
            ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/warc.paths.gz"],
            "read the same file over HTTPS instead: https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-10/warc.paths.gz",
        ),
    ],
)
def test_bad_inputs_are_one_line(paths, needle):
    with pytest.raises(WarcError, match=needle):
        expand_paths(paths)


def test_an_archive_without_japanese_is_refused(tmp_path):
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "en.warc.gz"
    with open(path, "wb") as fh:
        _response(WARCWriter(fh, gzip=True), "https://example.com/", page(ENGLISH_TEXT, "en").encode(), "text/html")
    with pytest.raises(WarcError, match="no Japanese document in 1 WARC/WET file.*not_japanese 1"):
        crawl_warc(WarcConfig(paths=[str(path)], root=str(tmp_path / "root"), crawl_id="e"), map_parts=in_process)
    assert storage.read_manifest(str(tmp_path / "root" / "raw" / "warc" / "e")) is None


def test_the_cli_options_take_their_defaults_from_the_config_model():
    import typer.main

    from gpt2ja.cli import app

    params = typer.main.get_command(app).commands["crawl"].commands["warc"].params
    for param in params:
        if param.name in WarcConfig.model_fields and param.name != "paths":
            default = WarcConfig.model_fields[param.name].get_default(call_default_factory=True)
            assert param.default is None or param.default == default, param.name


def test_the_bundled_demo_archive_is_what_make_demo_writes(tmp_path):
    from warcio.archiveiterator import ArchiveIterator

    from gpt2ja.crawler.warc_demo import make_demo

    bundled = REPO / "examples" / "warc" / "aozora-mirror.warc.gz"
    fresh = make_demo(str(tmp_path / bundled.name))

    def records(path):
        with open(path, "rb") as fh:
            return [(r.rec_headers.headers, r.content_stream().read()) for r in ArchiveIterator(fh)]

    assert records(bundled) == records(fresh)  # regenerate it with: python -m gpt2ja.crawler.warc make-demo <path>


def gpt2ja(*args: str) -> subprocess.CompletedProcess:
    return procs.run(GPT2JA + list(args))


@pytest.mark.slow
def test_cli_end_to_end(archives, tmp_path):
    root = str(tmp_path / "root")
    got = gpt2ja("crawl", "warc", archives["dir"], "--root", root, "--crawl-id", "cli", "--workers", "2")
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[0].startswith("5 documents, ")
    assert (
        "dropped: http_404 1, malformed_record 1, not_html 1, not_japanese 3, too_short 1, truncated_gzip 1"
        in got.stdout
    )
    again = gpt2ja("crawl", "warc", archives["dir"], "--root", root, "--crawl-id", "cli")
    assert again.returncode == 0 and "already complete" in again.stderr
    bad = gpt2ja("crawl", "warc", str(tmp_path / "missing.warc.gz"), "--root", root)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing.warc.gz'}: no such file or folder; "
        "give WARC/WET files (.warc.gz, .wet.gz), folders of them, gs:// "
        "or https:// URIs, or a warc.paths.gz listing"
    ]
    helptext = " ".join(gpt2ja("crawl", "warc", "-h").stdout.split())
    assert "--first" in helptext and "--paths-base" in helptext and "s3:// is refused" in helptext


@pytest.mark.slow
def test_the_warc_demo_config_crawls_and_cleans(tmp_path):
    """configs/warc-demo.yaml: the bundled archive → raw documents → a clean corpus, as the flow runs it."""
    import yaml

    from gpt2ja.corpus.clean import run_clean
    from gpt2ja.flows.config import WarcCrawl, validate_config

    data = yaml.safe_load((REPO / "configs" / "warc-demo.yaml").read_text(encoding="utf-8"))
    data["root"] = str(tmp_path / "run")
    data["crawl"][0]["paths"] = [str(REPO / p) for p in data["crawl"][0]["paths"]]
    config = validate_config(data, "configs/warc-demo.yaml")
    entry = config.crawl[0]
    assert isinstance(entry, WarcCrawl)
    raw = crawl_warc(entry.warc_config(config.root))
    counts = storage.read_manifest(raw)["counts"]
    assert counts["drops"] == {"http_404": 1, "not_html": 1} and counts["documents"] == 68
    rashomon = next(d for d in read_documents(raw) if d.url.endswith("/127_15260.html"))
    assert (
        rashomon.title == "羅生門"
        and rashomon.meta["encoding"] == "cp932"
        and "ある日の暮方の事である" in rashomon.text
    )
    assert rashomon.url == "http://mirror.local/cards/000879/files/127_15260.html"
    clean = run_clean(config.clean.clean_config([raw], config.clean_uri))
    manifest = storage.read_manifest(clean)
    assert manifest["counts"]["documents_out"] > 0
    texts = "".join(d.text for d in read_documents(str(Path(clean) / "train")))
    texts += "".join(d.text for d in read_documents(str(Path(clean) / "validation")))
    assert "下人" in texts  # 羅生門 survived the web preset and dedup
    assert json.loads(json.dumps(manifest["counts"]["drops"]))  # drops by name, as for any crawl


@pytest.mark.slow
def test_the_crawl_flow_reads_each_file_as_a_task(archives, tmp_path):
    """A ``warc`` crawl entry in the flow: its files are parts on the entry's task runner (here threads)."""
    from prefect.testing.utilities import prefect_test_harness

    from gpt2ja.flows.config import WarcCrawl
    from gpt2ja.flows.stages import crawl_flow

    entry = WarcCrawl(paths=[archives["dir"]], crawl_id="flow", workers=2, task_runner={"kind": "threads"})
    with prefect_test_harness(server_startup_timeout=procs.STARTUP_LIMIT_S):
        first = crawl_flow(str(tmp_path), [entry])
        again = crawl_flow(str(tmp_path), [entry])
    out = str(tmp_path / "raw" / "warc" / "flow")
    assert first == [{"uri": out, "skipped": False}] and again == [{"uri": out, "skipped": True}]
    assert storage.read_manifest(out)["counts"]["drops"] == DROPS

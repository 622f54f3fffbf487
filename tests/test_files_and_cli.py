"""The ``files`` source and the command line, run as users run them (the installed ``gpt2ja`` script)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.crawler.files import crawl_files
from gpt2ja.infra import storage
from tests import procs
from tests.conftest import MIRROR

GPT2JA = [str(Path(sys.executable).with_name("gpt2ja"))]
RASHOMON_ZIP = MIRROR / "cards/000879/files/127_ruby_150.zip"
RASHOMON_XHTML = MIRROR / "cards/000879/files/127_15260.html"


def gpt2ja(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return procs.run(GPT2JA + list(args), cwd=cwd)


@pytest.fixture
def user_dir(tmp_path):
    d = tmp_path / "mytexts"
    (d / "sub").mkdir(parents=True)
    (d / "plain.txt").write_text("これは利用者の手元にある普通のテキストです。\n二行目です。\n", encoding="utf-8")
    (d / "sjis.txt").write_bytes("シフトJISで書かれた文章です。①番目の段落～。\n".encode("cp932"))
    (d / "aozora.txt").write_bytes(
        "題名\n著者\n\n　本文《ほんぶん》です。［＃改ページ］\n\n底本：「どこか」\n".encode("cp932")
    )
    shutil.copy(RASHOMON_ZIP, d / "sub" / "rashomon.zip")
    (d / "sub" / "broken.zip").write_bytes(RASHOMON_ZIP.read_bytes()[:500])
    (d / "records.jsonl").write_text(
        json.dumps({"text": "一つ目のレコードです。", "title": "一"}, ensure_ascii=False)
        + "\n"
        + "{not json\n"
        + json.dumps({"title": "本文なし"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"text": "二つ目のレコードです。", "url": "https://example.jp/2"}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    with gzip.open(d / "more.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "圧縮されたレコードです。"}, ensure_ascii=False) + "\n")
    (d / "garbage.txt").write_bytes(b"\x80\x81\xff" * 50)
    (d / "empty.txt").write_bytes(b"")
    (d / "photo.png").write_bytes(b"\x89PNG\r\n")
    return d


def test_files_source_reads_a_users_directory(user_dir, tmp_path):
    out = crawl_files(str(user_dir), root=str(tmp_path / "root"), crawl_id="f")
    all_docs = list(read_documents(out))
    docs = {d.title: d for d in all_docs}
    manifest = storage.read_manifest(out)
    assert manifest["counts"]["drops"] == {
        "bad_jsonl_line": 2,
        "bad_zip": 1,
        "empty_text": 1,
        "undecodable": 1,
        "unsupported_file": 1,
    }
    assert manifest["counts"]["documents"] == len(all_docs) == 7
    assert docs["plain"].text.startswith("これは利用者の手元にある") and docs["plain"].meta["encoding"] == "utf-8"
    assert "①番目の段落～" in docs["sjis"].text and docs["sjis"].meta["encoding"] == "cp932"
    assert docs["題名"].text == "　本文です。" and docs["題名"].author == "著者"
    assert docs["羅生門"].text.startswith("　ある日の暮方の事である。")
    assert docs["一"].text == "一つ目のレコードです。"
    assert any(d.url == "https://example.jp/2" for d in all_docs)
    assert any(d.text == "圧縮されたレコードです。" for d in all_docs)
    # the same directory again: complete, skipped
    assert crawl_files(str(user_dir), root=str(tmp_path / "root"), crawl_id="f") == out
    assert storage.read_manifest(out)["created_at"] == manifest["created_at"]


@pytest.mark.slow
def test_extract_prints_plain_text_and_editions_agree():
    from_zip = gpt2ja("extract", str(RASHOMON_ZIP))
    from_html = gpt2ja("extract", str(RASHOMON_XHTML))
    assert from_zip.returncode == 0, from_zip.stderr
    assert from_zip.stdout.startswith("　ある日の暮方の事である。")
    assert "《" not in from_zip.stdout and "底本" not in from_zip.stdout
    assert from_zip.stdout == from_html.stdout


@pytest.mark.slow
def test_extract_txt_file(tmp_path):
    import zipfile

    with zipfile.ZipFile(RASHOMON_ZIP) as z:
        name = next(n for n in z.namelist() if n.endswith(".txt"))
        (tmp_path / "rashomon.txt").write_bytes(z.read(name))
    got = gpt2ja("extract", str(tmp_path / "rashomon.txt"))
    assert got.returncode == 0 and got.stdout == gpt2ja("extract", str(RASHOMON_ZIP)).stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["crawl", "aozora", "--bogus"], "'gpt2ja crawl aozora' has no option --bogus"),
        (["train", "--lr", "3e-4"], "has no option --lr; did you mean --learning-rate?"),  # nanoGPT's name
        (["train", "--data", "d", "--run", "r", "--max-steps", "9"], "did you mean --steps?"),
        (["clean", "--inn", "x"], "did you mean --in?"),
        (
            ["train", "--data", "d", "--run", "r", "--preset", "tiny", "--steps", "-1"],
            "steps: must be at least 1, got -1",
        ),
        (
            ["train", "--data", "d", "--run", "r", "--preset", "tiny", "--steps", "10"],
            "warmup_steps 100 must be fewer than steps 10",
        ),
        (["crawl", "aozora"], "Missing option '--start-url'"),
        (["crawl", "aozora", "--start-url", "http://x/", "--max-pages", "-1"], "max_pages"),
        (["crawl", "web", "--seed", "http://x/", "--polite", "--settings"], "has no option --settings"),
        (["crawl", "web"], "give at least one start URL"),
        (["crawl", "files", "/no/such/dir"], "is not a directory"),
        (["extract", "/no/such/file.zip"], "/no/such/file.zip"),
        (["show", "/no/such/artifact"], "no _MANIFEST.json"),
    ],
)
@pytest.mark.slow
def test_bad_arguments_get_one_clear_line(args, needle):
    got = gpt2ja(*args)
    assert got.returncode != 0
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in got.stderr


@pytest.mark.slow
def test_help_reads_well():
    got = gpt2ja("--help")
    assert got.returncode == 0
    assert "crawl → clean → tokenizer → TFRecord shards" in " ".join(got.stdout.split())
    assert got.stdout.startswith("Usage: gpt2ja ")
    listed = [line.split()[0] for line in got.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed[:9] == ["crawl", "clean", "tokenizer", "shards", "train", "eval", "generate", "score", "export"]
    assert "--install-completion" in got.stdout and "--version" in got.stdout
    assert gpt2ja("-h").stdout == got.stdout
    assert gpt2ja("--version").stdout.startswith("gpt2ja 0.")
    sub = gpt2ja("crawl", "aozora", "--help")
    assert "--start-url" in sub.stdout and "--no-polite" in sub.stdout
    for command in (["crawl", "web"], ["train"], ["eval"], ["export", "hf"], ["clean"], ["generate"]):
        text = gpt2ja(*command, "-h").stdout
        assert "<" not in text and "list[" not in text, text  # readable values: URI, N, X, KEY=VALUE
    assert "--data URI" in gpt2ja("train", "-h").stdout and "--set KEY=VALUE" in gpt2ja("clean", "-h").stdout
    assert "what exists of it so far" not in " ".join(gpt2ja("demo", "-h").stdout.split())


@pytest.mark.slow
def test_demo_crawls_the_bundled_mirror(tmp_path):
    got = gpt2ja("demo", "--root", str(tmp_path / "demo"))
    assert got.returncode == 0, got.stderr[-2000:]
    root = tmp_path / "demo"
    assert "crawl      36 documents" in got.stdout and f"{root}/raw/aozora/demo/part-" in got.stdout
    assert "bits/character" in got.stdout and got.stdout.count("    · ある日の暮方の事である。") == 3
    assert (root / "runs" / "tiny-demo" / "export" / "hf" / "config.json").exists()
    assert (root / "runs" / "tiny-demo" / "eval" / "eval.json").exists()


@pytest.mark.slow
def test_clean_command_with_config(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for name in ("127_ruby_150.zip", "42_ruby_154.zip", "92_ruby_164.zip"):
        shutil.copy(MIRROR / "cards/000879/files" / name, texts / name)
    shutil.copy(MIRROR / "cards/000879/files/92_ruby_164.zip", texts / "copy-of-92.zip")  # an exact duplicate
    root = tmp_path / "root"
    crawl = gpt2ja("crawl", "files", str(texts), "--root", str(root), "--crawl-id", "mine")
    assert crawl.returncode == 0, crawl.stderr
    raw = root / "raw" / "files" / "mine"
    got = gpt2ja(
        "clean",
        "--in",
        str(raw),
        "--out",
        str(root / "clean" / "mine"),
        "--config",
        str(Path(__file__).resolve().parent.parent / "configs" / "clean.yaml"),
    )
    assert got.returncode == 0, got.stderr
    assert "4 documents in → 3 out" in got.stdout
    assert "exact_duplicate 1" in got.stdout
    assert (root / "clean" / "mine" / "report.md").exists()

    # and a tokenizer on it
    tok = gpt2ja(
        "tokenizer",
        "train",
        "--corpus",
        str(root / "clean" / "mine"),
        "--kind",
        "sentencepiece",
        "--vocab-size",
        "100",
        "--out",
        str(root / "tok"),
    )
    assert tok.returncode == 1 and len(tok.stderr.strip().splitlines()) == 1
    assert "too small" in tok.stderr and "Traceback" not in tok.stderr
    none = gpt2ja(
        "tokenizer",
        "train",
        "--corpus",
        str(root / "clean" / "mine"),
        "--kind",
        "sentencepiece",
        "--vocab-size",
        "400",
        "--sample-sentences",
        "0",
        "--out",
        str(root / "tok0"),
    )
    assert none.returncode == 1 and len(none.stderr.strip().splitlines()) == 1
    assert "sample_sentences: must be at least 1, got 0" in none.stderr
    tok = gpt2ja(
        "tokenizer", "train", "--corpus", str(root / "clean" / "mine"), "--kind", "bytes", "--out", str(root / "tok")
    )
    assert tok.returncode == 0, tok.stderr
    shown = gpt2ja("tokenizer", "encode", str(root / "tok"), "羅生門")
    assert shown.returncode == 0
    assert "羅(3 bytes) | 生(3 bytes) | 門(3 bytes)" in shown.stdout and "9 tokens" in shown.stdout


@pytest.mark.slow
def test_clean_command_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("clean:\n  source_presets:\n    aozora: poetry\n")
    got = gpt2ja("clean", "--in", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg))
    lines = got.stderr.strip().splitlines()
    assert got.returncode == 1 and len(lines) == 1 and "unknown presets" in lines[0], got.stderr
    missing = gpt2ja("clean", "--in", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert missing.returncode != 0 and "has no _MANIFEST.json" in missing.stderr
    assert "Traceback" not in missing.stderr

"""The web spider and the aozora spider on bad input, against a real local HTTP server.

Each bad page must be counted under its named reason in the manifest; the crawl
goes on and keeps the good pages.
"""

from __future__ import annotations

import gzip
import json

import pytest

from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.crawler.extract.web import decode_html, kana_ratio
from gpt2ja.crawler.runner import CrawlConfig, crawl_in_subprocess
from gpt2ja.infra import storage
from tests.conftest import author_urls

ARTICLE = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
    "ニャーニャー泣いていた事だけは記憶している。吾輩はここで始めて人間というものを見た。"
)
PARAS = [
    ARTICLE,
    "しかもあとで聞くとそれは書生という人間中で一番獰悪な種族であったそうだ。" * 3,
    "この書生というのは時々我々を捕えて煮て食うという話である。しかしその当時は何という考もなかったから"
    "別段恐しいとも思わなかった。" * 2,
]


def page(title: str, paras: list[str], links: list[str] = (), head: str = "", charset_meta: str = "") -> str:
    nav = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    body = "".join(f"<p>{p}</p>" for p in paras)
    return (
        f"<!DOCTYPE html><html><head>{charset_meta}<title>{title}</title>{head}</head><body>"
        f"<nav><ul>{nav}</ul></nav><article><h1>{title}</h1>{body}</article>"
        f"<footer>Copyright</footer></body></html>"
    )


@pytest.fixture
def bad_site(tmp_path):
    site = tmp_path / "site"
    (site / "private").mkdir(parents=True)
    (site / "slow").mkdir()
    links = [
        "/utf8.html",
        "/sjis.html",
        "/eucjp.html",
        "/empty.html",
        "/english.html",
        "/chinese.html",
        "/private/secret.html",
        "/missing.html",
        "/slow/page.html",
        "/garbage.html",
        "/nav.html",
        "/canon.html",
        "/canon.html?ref=top",
        "/file.zip",
        "/huge.html",
        "/bomb.html",
        "/redirect/loop",
        "/redirect/ping",
        "/redirect/chain/0",
    ]
    (site / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (site / "index.html").write_text(
        page("目次", PARAS[:1], links, charset_meta='<meta charset="utf-8">'), encoding="utf-8"
    )
    (site / "utf8.html").write_text(
        page("ユーティーエフ", PARAS, charset_meta='<meta charset="utf-8">'), encoding="utf-8"
    )
    # Shift_JIS with no declaration anywhere (the server sends text/html without a charset),
    # including cp932-only characters (①, ～ as U+FF5E)
    (site / "sjis.html").write_bytes(page("シフトJIS①", PARAS + ["値段は①百円～二百円です。"]).encode("cp932"))
    (site / "eucjp.html").write_bytes(
        page(
            "イーユーシー", PARAS, charset_meta='<meta http-equiv="Content-Type" content="text/html; charset=EUC-JP">'
        ).encode("euc_jp")
    )
    (site / "empty.html").write_bytes(b"")
    (site / "english.html").write_text(
        page("English", ["This page is written in English only. " * 20] * 3), encoding="utf-8"
    )
    (site / "chinese.html").write_text(
        page("中文", ["这是一个用中文写的页面。我们今天去公园散步，天气很好。" * 8] * 3), encoding="utf-8"
    )
    (site / "private" / "secret.html").write_text(page("秘密", PARAS), encoding="utf-8")
    (site / "slow" / "page.html").write_text(page("遅い", PARAS), encoding="utf-8")
    (site / "garbage.html").write_bytes(b"<html><body><p>" + b"\x80\xff\xfe\x85" * 200 + b"</p></body></html>")
    (site / "nav.html").write_text(
        '<html><head><meta charset="utf-8"></head><body><nav><a href="/index.html">トップ</a></nav></body></html>',
        encoding="utf-8",
    )
    (site / "canon.html").write_text(
        page("正規", PARAS, head='<link rel="canonical" href="/canon.html">', charset_meta='<meta charset="utf-8">'),
        encoding="utf-8",
    )
    (site / "huge.html").write_text(page("巨大", PARAS * 400, charset_meta='<meta charset="utf-8">'), encoding="utf-8")
    (site / "file.zip").write_bytes(b"PK\x03\x04 not a page")
    return site


@pytest.mark.slow
def test_web_crawl_counts_every_bad_input(bad_site, serve, tmp_path):
    server = serve(bad_site, slow_seconds=4)
    cfg = CrawlConfig(
        source="web",
        start_urls=[server.url("/index.html")],
        root=str(tmp_path / "root"),
        crawl_id="w",
        polite=False,
        progress_interval=0,
        download_timeout=1.5,
        download_maxsize=200_000,
    )
    out = crawl_in_subprocess(cfg)
    manifest = storage.read_manifest(out)
    drops = manifest["counts"]["drops"]
    docs = {d.url.rsplit("/", 1)[-1]: d for d in read_documents(out)}

    assert set(docs) == {"index.html", "utf8.html", "sjis.html", "eucjp.html", "canon.html"}
    assert docs["sjis.html"].meta["encoding"] == "cp932" and docs["sjis.html"].meta["encoding_source"] == "detected"
    assert "値段は①百円～二百円です。" in docs["sjis.html"].text
    assert docs["eucjp.html"].meta["encoding"] == "euc_jp" and docs["eucjp.html"].meta["encoding_source"] == "meta"
    assert ARTICLE in docs["eucjp.html"].text
    assert drops["empty_page"] == 1
    assert drops["not_japanese"] == 2  # English, and Chinese (kanji but no kana)
    assert drops["robots_disallowed"] == 1
    assert drops["http_404"] == 1
    assert drops["timeout"] == 1
    assert drops["too_large"] == 1  # huge.html is over download_maxsize
    assert drops["bad_encoding"] == 1
    assert drops["too_short"] == 1  # nav.html: a menu and nothing else
    assert drops["duplicate_url"] == 1  # canon.html?ref=top names canon.html as canonical
    assert drops["decompression_bomb"] == 1  # bomb.html: 64 KB of gzip inflating past download_maxsize
    assert drops["redirect_loop"] == 2  # /redirect/loop → itself; /redirect/ping → pong → ping
    assert drops["too_many_redirects"] == 1  # /redirect/chain/0 → 1 → 2 → … past REDIRECT_MAX_TIMES
    assert "ignored" not in drops  # every outcome has its own name
    assert "/private/secret.html" not in {p for p, _, _ in server.requests}
    assert "/file.zip" not in {p for p, _, _ in server.requests}  # not a page: never fetched
    assert manifest["counts"]["documents"] == 5


@pytest.mark.slow
def test_sitemap_seeds_the_crawl(bad_site, serve, tmp_path):
    server = serve(bad_site)
    (bad_site / "sitemap.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<url><loc>{server.url('/utf8.html')}</loc></url><url><loc>{server.url('/eucjp.html')}</loc></url>"
        "</urlset>"
    )
    cfg = CrawlConfig(
        source="web",
        sitemaps=[server.url("/sitemap.xml")],
        root=str(tmp_path / "root"),
        crawl_id="s",
        polite=False,
        progress_interval=0,
        depth_limit=1,
    )
    out = crawl_in_subprocess(cfg)
    urls = {d.url.rsplit("/", 1)[-1] for d in read_documents(out)}
    assert {"utf8.html", "eucjp.html"} <= urls


@pytest.mark.slow
def test_robots_crawl_delay_is_honoured(serve, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "robots.txt").write_text("User-agent: *\nCrawl-delay: 1\n")
    links = [f"/p{i}.html" for i in range(3)]
    (site / "index.html").write_text(
        page("目次", PARAS, links, charset_meta='<meta charset="utf-8">'), encoding="utf-8"
    )
    for href in links:
        (site / href.lstrip("/")).write_text(page(href, PARAS, charset_meta='<meta charset="utf-8">'), encoding="utf-8")
    server = serve(site)
    # polite=False removes our own delay: what remains is the site's Crawl-delay
    cfg = CrawlConfig(
        source="web",
        start_urls=[server.url("/index.html")],
        root=str(tmp_path / "root"),
        crawl_id="d",
        polite=False,
        progress_interval=0,
    )
    crawl_in_subprocess(cfg)
    times = [t for p, _, t in server.requests if p != "/robots.txt"]
    assert len(times) == 4
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.95, gaps


@pytest.mark.slow
def test_aozora_truncated_zip_falls_back_to_xhtml_and_is_counted(mirror_copy, serve, tmp_path):
    files = mirror_copy / "cards" / "000879" / "files"
    for name in ("127_ruby_150.zip", "42_ruby_154.zip"):  # 羅生門 has an XHTML edition, 鼻 has none
        data = (files / name).read_bytes()
        (files / name).write_bytes(data[: len(data) // 2])
    server = serve(mirror_copy)
    cfg = CrawlConfig(
        source="aozora",
        start_urls=author_urls(server)[:1],
        root=str(tmp_path / "root"),
        crawl_id="z",
        polite=False,
        progress_interval=0,
    )
    out = crawl_in_subprocess(cfg)
    drops = storage.read_manifest(out)["counts"]["drops"]
    docs = {d.title: d for d in read_documents(out)}
    assert drops["bad_zip"] == 2
    assert drops["no_edition_readable"] == 1
    assert "鼻" not in docs
    assert docs["羅生門"].meta["edition"] == "xhtml"
    assert len(docs) == 11


@pytest.mark.slow
def test_crawl_writes_to_gcs(serve, gcs_emulator, tmp_path):
    """``--root gs://…``: parts and manifest land in the bucket (the GCS emulator)."""
    from tests.conftest import MIRROR

    server = serve(MIRROR)
    root = f"gs://{gcs_emulator.bucket}/crawl-test"
    cfg = CrawlConfig(
        source="aozora",
        start_urls=[server.url("/cards/000121/card628.html"), server.url("/cards/000121/card637.html")],
        root=root,
        crawl_id="g",
        polite=False,
        progress_interval=0,
        state_dir=str(tmp_path / "state"),
    )
    out = crawl_in_subprocess(cfg, env={"STORAGE_EMULATOR_HOST": gcs_emulator.host})
    assert out == f"{root}/raw/aozora/g"
    manifest = storage.read_manifest(out)
    assert manifest["counts"]["documents"] == 2
    part = storage.join(out, manifest["files"][0]["path"])
    lines = gzip.decompress(storage.read_bytes(part)).decode("utf-8").splitlines()
    assert {json.loads(line)["title"] for line in lines} == {"ごん狐", "手袋を買いに"}


def test_decode_html_prefers_declaration_then_detects():
    text = "日本語のページです。①～"
    assert decode_html(text.encode("cp932"), "text/html; charset=Shift_JIS", "u")[1:] == ("cp932", "header")
    assert decode_html(text.encode("cp932"), "text/html", "u")[1:] == ("cp932", "detected")
    # a wrong label is not trusted blindly
    got, enc, how = decode_html(text.encode("utf-8"), "text/html; charset=euc-jp", "u")
    assert got == text and enc == "utf-8" and how.startswith("detected")


def test_kana_ratio():
    assert kana_ratio("これはペンです") > 0.7
    assert kana_ratio("这是中文") == 0.0
    assert kana_ratio("English only") == 0.0


@pytest.mark.slow
def test_an_unreachable_site_is_a_failure_that_a_rerun_retries(bad_site, tmp_path):
    """Nothing answers: exit 1 with one line and no manifest; once the site is up, the same crawl runs."""
    from tests.net import free_port

    port = free_port()
    cfg = CrawlConfig(
        source="web",
        start_urls=[f"http://127.0.0.1:{port}/index.html"],
        root=str(tmp_path),
        crawl_id="w",
        polite=False,
        progress_interval=0,
    )
    from gpt2ja.crawler.runner import CrawlError

    with pytest.raises(CrawlError, match="no page could be fetched") as err:
        crawl_in_subprocess(cfg)
    assert "\n" not in str(err.value)
    assert storage.read_manifest(cfg.out_uri) is None
    from gpt2ja.crawler.mirror import MirrorServer
    from tests.conftest import TestSiteHandler

    server = MirrorServer(str(bad_site), port=port, handler=TestSiteHandler)  # the site is back
    server.httpd.slow_seconds = 5.0
    server.start()
    try:
        crawl_in_subprocess(cfg)  # the same command: its failed requests are tried again
    finally:
        server.stop()
    assert storage.read_manifest(cfg.out_uri)["counts"]["documents"] > 0


@pytest.mark.slow
def test_reaching_max_pages_is_a_complete_bounded_crawl(bad_site, serve, tmp_path):
    server = serve(bad_site)
    cfg = CrawlConfig(
        source="web",
        start_urls=[server.url("/index.html")],
        root=str(tmp_path),
        crawl_id="b",
        polite=False,
        progress_interval=0,
        max_pages=3,
        settings={"CONCURRENT_REQUESTS": 1, "CONCURRENT_REQUESTS_PER_DOMAIN": 1},
    )
    crawl_in_subprocess(cfg)
    manifest = storage.read_manifest(cfg.out_uri)
    assert manifest["close_reasons"] == ["closespider_pagecount"]
    asked = len(server.requests)
    crawl_in_subprocess(cfg)  # complete: the rerun is skipped, nothing is fetched
    assert len(server.requests) == asked


def test_ruby_readings_are_dropped_and_the_base_text_stays_inline():
    """Aozora's XHTML marks furigana as <ruby><rb>下人</rb><rp>（</rp><rt>げにん</rt><rp>）</rp></ruby>: the text
    keeps 下人 in its sentence (trafilatura alone put each base on a line of its own and kept no reading)."""
    from gpt2ja.crawler.extract.web import page_from_html

    ruby = (
        "一人の<ruby><rb>下人</rb><rp>（</rp><rt>げにん</rt><rp>）</rp></ruby>が、"
        "<ruby>羅生門<rt>らしょうもん</rt></ruby>の下で"
    )
    html = page("羅生門", [ruby + "雨やみを待っていた。" + PARAS[1], PARAS[2]], charset_meta='<meta charset="utf-8">')
    text = page_from_html(html, "http://x/rashomon.html", "utf-8", "meta").text
    assert "一人の下人が、羅生門の下で雨やみを待っていた。" in text
    assert "げにん" not in text and "らしょうもん" not in text and "（" not in text

"""``corpus-refresh`` against a copy of the Aozora mirror served over real HTTP.

The first refresh makes the base crawl and the corpus; one new work (a card, its
zip and a link on the author page) is added to the site; the second refresh
fetches the author pages again but none of the cards that gave a document, and
the corpus grows by exactly the new work. A third refresh with nothing new
leaves the corpus as it is (clean skips).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from gpt2ja.corpus.document import document_id
from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.flows.config import PipelineConfig
from gpt2ja.infra import stage, storage
from tests import procs
from tests.conftest import author_urls

SITE = "http://mirror.local"
NEW_CARD = "/cards/000879/card99001.html"
NEW_ZIP = "/cards/000879/files/99001_ruby_1.zip"
# An original text in Aozora Bunko's file format (title, author, body, 底本 footer), written for this test.
NEW_WORK = """春の川
試験　花子

　川の水は、冬のあいだ眠っていたように細く流れていたが、三月の半ばを過ぎると急に音を高くしはじめた。
　少年は毎朝、学校へ行く前に橋の上から川をのぞくのが習いであった。水の色は日ごとに変り、ある朝は空を映して青く、ある朝は山の雪をとかした土の色に濁っていた。
　「今日はずいぶん速いね」と妹が言った。少年はうなずいて、流れてゆく小枝を目で追った。小枝はくるくると回りながら、石にぶつかっては向きを変え、やがて見えなくなった。
　その日の帰り道、二人は土手に腰をおろして、つくしを摘んだ。風はまだ冷たかったけれど、日なたに座っていると背中がじんわりと温かくなった。
　夜になっても、川の音は窓の外で鳴りつづけていた。少年は布団の中でその音を聞きながら、明日の朝もまた橋の上から川をのぞこうと思った。


底本：「試験用の本」試験書房
　　　2026（令和8）年1月1日第1刷発行
入力：試験
校正：試験
"""


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=procs.STARTUP_LIMIT_S):
        yield


def add_work(mirror) -> None:
    """Publish one new work on the mirror: its card page (made from 鼻's), its text zip, a link from the author."""
    card = (mirror / "cards/000879/card42.html").read_text(encoding="utf-8")
    card = (
        card.replace("42_ruby_154.zip", "99001_ruby_1.zip")
        .replace("42_15228.html", "99001_1.html")
        .replace('<font size="+2">鼻</font>', '<font size="+2">春の川</font>')
    )
    (mirror / NEW_CARD.lstrip("/")).write_text(card, encoding="utf-8")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("99001_ruby_1.txt", NEW_WORK.replace("\n", "\r\n").encode("cp932"))
    (mirror / NEW_ZIP.lstrip("/")).write_bytes(buf.getvalue())
    author = mirror / "index_pages/person879.html"
    page = author.read_text(encoding="utf-8")
    link = '<li><a href="../cards/000879/card99001.html">春の川</a>　（新字新仮名、作品ID：99001）　</li>\n'
    at = page.index('<li><a href="../cards/000879/card42.html">')
    author.write_text(page[:at] + link + page[at:], encoding="utf-8")


def corpus_ids(uri: str) -> set[str]:
    return {d.id for split in ("train", "validation") for d in read_documents(storage.join(uri, split))}


@pytest.mark.slow
def test_a_refresh_adds_exactly_the_new_work(prefect_harness, serve, mirror_copy, tmp_path):
    from gpt2ja.flows.refresh import corpus_refresh

    server = serve(mirror_copy)
    config = PipelineConfig.model_validate(
        {
            "root": str(tmp_path / "run"),
            "corpus": "aozora",
            "tokenizer_name": "sp",
            "dataset": "sp-128",
            # documents are recorded under the site's address, not the port the mirror happens to be on
            "crawl": [
                {
                    "source": "aozora",
                    "crawl_id": "mirror",
                    "polite": False,
                    "progress_interval": 0,
                    "start_urls": author_urls(server),
                    "url_alias": {server.url(""): SITE},
                }
            ],
            "clean": {"workers": 1, "split": {"holdout_authors": ["新美 南吉"]}},
            "tokenizer": {"kind": "sentencepiece", "vocab_size": 3000},
            "shards": {"seq_len": 128},
        }
    )
    base = storage.join(config.root, "raw", "aozora", "mirror")

    first = corpus_refresh(config, refresh_id="first")
    assert [c["uri"] for c in first["crawl"]] == [base]  # no base crawl yet: the refresh made it
    assert first["documents_before"] == 0 and first["documents_after"] > 0
    ids_before = corpus_ids(config.clean_uri)
    assert len(ids_before) == first["documents_after"]
    docs = list(read_documents(base))
    assert all(
        d.id == document_id("aozora", d.url) and d.meta["fetched_url"] == server.url(d.url[len(SITE) :]) for d in docs
    )
    cards_with_documents = {d.url.removeprefix(SITE) for d in docs}
    assert len(cards_with_documents) == 36

    add_work(mirror_copy)
    del server.requests[:]
    second = corpus_refresh(config, refresh_id="second")
    refresh = storage.join(config.root, "raw", "aozora", "mirror.refresh-second")
    assert [c["uri"] for c in second["crawl"]] == [refresh] and not second["clean"]["skipped"]
    fetched = {path for path, _status, _t in server.requests}
    assert {f"/index_pages/person{a}.html" for a in ("879", "81", "121", "74")} <= fetched  # authors again
    assert not fetched & cards_with_documents  # no card that gave a document was fetched again (alias undone)
    assert {NEW_CARD, NEW_ZIP} <= fetched
    new = list(read_documents(refresh))
    assert [(d.title, d.url) for d in new] == [("春の川", SITE + NEW_CARD)]
    assert second["documents_before"] == first["documents_after"]
    assert second["documents_after"] == first["documents_after"] + 1
    assert corpus_ids(config.clean_uri) == ids_before | {new[0].id}
    clean = storage.read_manifest(config.clean_uri)
    assert clean["counts"]["drops"].get("duplicate_id", 0) == 0  # nothing fetched twice, so nothing to drop
    assert [stage.input_uri(clean, i["uri"]) for i in clean["inputs"]] == [base, refresh]

    third = corpus_refresh(config, refresh_id="third")  # nothing new: an empty crawl, the corpus untouched
    assert (
        storage.read_manifest(storage.join(config.root, "raw", "aozora", "mirror.refresh-third"))["counts"]["documents"]
        == 0
    )
    assert third["clean"]["skipped"] and third["documents_after"] == second["documents_after"]
    again = corpus_refresh(config, refresh_id="third")  # the same refresh id: already done
    assert again["crawl"][0]["skipped"] and again["clean"]["skipped"]


# ----------------------------------------------------------------- which crawl a refresh runs (no Prefect, no HTTP)


def _crawl_dir(root: str, source: str, crawl_id: str, documents: int | None) -> str:
    """A crawl directory with one part; finished (a manifest) unless ``documents`` is None."""
    uri = storage.join(root, "raw", source, crawl_id)
    storage.write_bytes(storage.join(uri, "part-00000.jsonl.gz"), b"")
    if documents is not None:
        storage.write_manifest(
            uri, storage.build_manifest(stage="crawl", config={}, counts={"documents": documents}, files=[], timings={})
        )
    return uri


def test_the_first_refresh_makes_the_base_crawl_then_each_one_its_own(tmp_path):
    from gpt2ja.crawler.refresh import corpus_inputs, known_settings, plan_refresh

    root = str(tmp_path)
    first = plan_refresh(root, "aozora", "demo", "r1")
    assert (first.crawl_id, first.base, first.known) == ("demo", True, [])

    base = _crawl_dir(root, "aozora", "demo", 36)
    _crawl_dir(root, "aozora", "demo2", 5)  # another configured crawl: not part of demo's history
    _crawl_dir(root, "aozora", "demo.other", 5)  # not a refresh of demo either
    plan = plan_refresh(root, "aozora", "demo", "r2")
    assert (plan.crawl_id, plan.base, plan.known, plan.done) == ("demo.refresh-r2", False, [base], False)
    assert known_settings(plan.known) == {
        "DUPEFILTER_CLASS": "gpt2ja.crawler.dupefilter.KnownDocumentsDupeFilter",
        "GPT2JA_KNOWN_CRAWLS": [base],
    }
    assert plan_refresh(root, "web", "demo", "r2").known == []  # web pages lead on: never skipped
    _crawl_dir(root, "web", "demo", 3)
    assert plan_refresh(root, "web", "demo", "r2").known == []

    r2 = _crawl_dir(root, "aozora", "demo.refresh-r2", 1)
    assert plan_refresh(root, "aozora", "demo", "r2").done  # the same refresh again: nothing to run
    _crawl_dir(root, "aozora", "demo.refresh-r3", 0)  # found nothing: neither skipped from nor cleaned
    r4 = _crawl_dir(root, "aozora", "demo.refresh-r4", None)  # interrupted
    plan = plan_refresh(root, "aozora", "demo", "r5")
    assert (plan.crawl_id, plan.resume, plan.known) == ("demo.refresh-r4", True, [base, r2])
    assert corpus_inputs(root, [("aozora", "demo")]) == [base, r2]
    assert corpus_inputs(root, [("files", "mine")]) == [storage.join(root, "raw", "files", "mine")]
    assert r4 not in corpus_inputs(root, [("aozora", "demo")])
    with pytest.raises(ValueError, match="refresh id 'a b': use letters, digits"):
        plan_refresh(root, "aozora", "demo", "a b")


@pytest.mark.slow
def test_a_refresh_of_a_warc_crawl_reads_its_archives_again(prefect_harness, tmp_path):
    """A warc entry in a refreshed config: the base crawl first, then a crawl of its own per refresh (no spider)."""
    import yaml

    from gpt2ja.flows.config import validate_config
    from gpt2ja.flows.refresh import corpus_refresh

    repo = Path(__file__).resolve().parent.parent
    data = yaml.safe_load((repo / "configs" / "warc-demo.yaml").read_text(encoding="utf-8"))
    data["root"] = str(tmp_path / "root")
    data["crawl"][0]["paths"] = [str(repo / "examples" / "warc" / "aozora-mirror.warc.gz")]
    config = validate_config(data, "warc-demo (test)")
    first = corpus_refresh(config, "r1")
    second = corpus_refresh(config, "r2")
    assert first["crawl"][0]["uri"].endswith("/raw/warc/aozora-mirror")
    assert (
        second["crawl"][0]["uri"].endswith("/raw/warc/aozora-mirror.refresh-r2") and not second["crawl"][0]["skipped"]
    )
    assert first["documents_after"] > 0 and second["documents_after"] == first["documents_after"]  # the same pages

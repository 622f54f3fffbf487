"""Exact and near-duplicate detection on real Aozora texts (芥川龍之介: 羅生門, 鼻, 蜘蛛の糸)."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash
from pydantic import ValidationError

from gpt2ja.corpus.dedup import (
    DedupConfig,
    Deduplicator,
    DedupRecord,
    candidate_probability,
    choose_bands,
    deduplicate,
    exact_key,
    make_record,
    s_curve_threshold,
    shingle_hash,
    shingles,
    signature,
)
from gpt2ja.corpus.document import Document
from gpt2ja.crawler.extract.aozora import from_zip

FILES = Path(__file__).resolve().parent.parent / "examples" / "aozora-mirror" / "cards" / "000879" / "files"
WORKS = {"rashomon": "127_ruby_150.zip", "hana": "42_ruby_154.zip", "kumo": "92_ruby_164.zip"}
CFG = DedupConfig()


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    # NFKC as the clean stage does before dedup
    return {
        name: unicodedata.normalize("NFKC", from_zip((FILES / f).read_bytes(), f).text) for name, f in WORKS.items()
    }


def edit_sentences(text: str, fraction: float, seed: int = 0) -> str:
    """Change, remove or extend ``fraction`` of the sentences (split on 。)."""
    rng = random.Random(seed)
    sentences = text.split("。")
    for i in rng.sample(range(len(sentences)), max(1, round(len(sentences) * fraction))):
        if i % 3 == 0:
            sentences[i] = sentences[i][::-1]  # changed
        elif i % 3 == 1:
            sentences[i] = ""  # removed
        else:
            sentences[i] += "。そのとき、遠くで鐘が鳴った"  # added
    return "。".join(sentences)


def record(key: str, text: str, when: str, cfg: DedupConfig = CFG, **meta) -> DedupRecord:
    return DedupRecord(key=key, priority=(when, 0, key), exact=exact_key(text), sig=signature(text, cfg), meta=meta)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / len(a)


def test_exact_duplicate_with_different_whitespace(texts):
    original = texts["rashomon"]
    reflowed = original.replace("\n", "\n\n ").replace("\u3000", "").replace("。", "。 ")
    assert reflowed != original and exact_key(reflowed) == exact_key(original)
    result = deduplicate([record("copy", reflowed, "2025-01-01"), record("orig", original, "2024-01-01")], CFG)
    assert result == {"copy": ("exact_duplicate", "orig")}


def test_near_duplicate_keeps_the_older_copy(texts):
    original = texts["rashomon"]
    edited = edit_sentences(original, 0.05)
    assert exact_key(edited) != exact_key(original)
    j = jaccard(signature(original, CFG), signature(edited, CFG))
    assert CFG.threshold <= j < 1.0
    # the edited copy is older here, so it is the one kept
    result = deduplicate([record("a-original", original, "2025-03-01"), record("z-edited", edited, "2024-03-01")], CFG)
    assert result == {"a-original": ("near_duplicate", "z-edited")}


def test_different_works_of_one_author_are_not_duplicates(texts):
    sigs = {name: signature(text, CFG) for name, text in texts.items()}
    assert jaccard(sigs["rashomon"], sigs["hana"]) < 0.1
    assert jaccard(sigs["hana"], sigs["kumo"]) < 0.1
    records = [record(name, text, "2024-01-01") for name, text in texts.items()]
    assert deduplicate(records, CFG) == {}


def test_banding_threshold_and_s_curve():
    assert (CFG.bands, CFG.rows) == (16, 8) == choose_bands(0.7, 128)
    assert abs(s_curve_threshold(CFG.bands, CFG.rows) - CFG.threshold) < 0.05
    probs = [candidate_probability(j, CFG.bands, CFG.rows) for j in np.linspace(0, 1, 101)]
    assert probs[0] == 0.0 and probs[-1] == 1.0
    assert all(p <= q for p, q in zip(probs, probs[1:]))  # monotonic
    assert all(p < q for p, q in zip(probs[10:90], probs[11:91]))  # strictly, where floats can tell
    # at (1/b)^(1/r) a pair is found with probability 1-(1-1/b)^b: about 0.64 for b=16
    assert 0.5 < candidate_probability(CFG.s_curve, CFG.bands, CFG.rows) < 0.7
    assert candidate_probability(0.9, 16, 8) > 0.99 and candidate_probability(0.4, 16, 8) < 0.02
    for threshold in (0.5, 0.8, 0.9):
        cfg = DedupConfig(threshold=threshold)
        assert abs(cfg.s_curve - threshold) < 0.05 and cfg.bands * cfg.rows <= cfg.num_perm


def test_config_rejects_inconsistent_banding():
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        DedupConfig(bands=20, rows=8)
    with pytest.raises(ValidationError, match="both bands and rows"):
        DedupConfig(bands=16)
    with pytest.raises(ValidationError, match="inconsistent with threshold"):
        DedupConfig(bands=4, rows=32)  # finds pairs only from J ≈ 0.96
    with pytest.raises(ValidationError, match="verify is off"):
        DedupConfig(bands=32, rows=4, verify=False)  # J ≈ 0.42 with nothing to confirm
    assert DedupConfig(bands=32, rows=4).s_curve < 0.5  # fine when candidates are verified


def test_verify_rejects_lsh_candidates_below_threshold(texts):
    original, edited = texts["rashomon"], edit_sentences(texts["rashomon"], 0.2)
    loose = DedupConfig(threshold=0.95, bands=32, rows=4)  # every ~0.85 pair is a candidate
    j = jaccard(signature(original, loose), signature(edited, loose))
    assert 0.6 < j < 0.95
    dedup = Deduplicator(loose)
    assert dedup.add(record("a", original, "1", loose)) == (None, None)
    assert dedup.add(record("b", edited, "2", loose)) == (None, None)
    assert dedup.stats()["rejected_by_verify"] == 1
    unverified = DedupConfig(threshold=0.45, bands=32, rows=4, verify=False)
    assert deduplicate([record("a", original, "1", unverified), record("b", edited, "2", unverified)], unverified) == {
        "b": ("near_duplicate", "a")
    }


def test_result_is_independent_of_input_order(texts):
    records = [
        record("r", texts["rashomon"], "2024-01-01", title="羅生門"),
        record("r-edit", edit_sentences(texts["rashomon"], 0.05), "2024-06-01"),
        record("r-space", texts["rashomon"].replace("\n", "\n\n"), "2024-02-01"),
        record("h", texts["hana"], "2024-01-01", title="鼻"),
        record("k-edit", edit_sentences(texts["kumo"], 0.05, seed=1), "2023-01-01"),
        record("k", texts["kumo"], "2024-01-01", title="蜘蛛の糸"),
        record("k-copy", texts["kumo"], "2024-01-01"),  # same priority: the key decides
    ]
    expected = {
        "r-space": ("exact_duplicate", "r"),
        "r-edit": ("near_duplicate", "r"),
        "k": ("near_duplicate", "k-edit"),
        "k-copy": ("near_duplicate", "k-edit"),  # an exact copy of a near duplicate
    }
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(records)
        assert deduplicate(records, CFG) == expected

    dedup = Deduplicator(CFG)
    for rec in sorted(records, key=lambda r: (r.priority, r.key)):
        dedup.add(rec)
    clusters = dedup.clusters()
    assert [(c["kept"], c["size"]) for c in clusters] == [("k-edit", 3), ("r", 3)]
    rashomon = clusters[1]
    assert rashomon["meta"] == {"title": "羅生門"}
    members = {m["key"]: (m["reason"], m["jaccard"]) for m in rashomon["members"]}
    assert members["r-space"] == ("exact_duplicate", 1.0)
    assert members["r-edit"][0] == "near_duplicate" and CFG.threshold <= members["r-edit"][1] < 1.0
    stats = dedup.stats()
    assert (stats["documents"], stats["kept"], stats["exact_duplicate"], stats["near_duplicate"]) == (7, 3, 1, 3)
    with pytest.raises(ValueError, match="out of"):
        dedup.add(record("a-late", "遅れて来た記録です。", "2000-01-01"))


def test_signatures_are_deterministic(texts):
    text = texts["kumo"]
    first = signature(text, CFG)
    assert first.dtype == np.uint32 and first.shape == (CFG.num_perm,)
    assert np.array_equal(first, signature(text, DedupConfig()))
    assert not np.array_equal(first, signature(text, DedupConfig(seed=2)))
    assert jaccard(first, signature(text + "\n", CFG)) == 1.0  # whitespace does not count


def test_vectorised_signature_equals_datasketch(texts):
    for text in (texts["kumo"], texts["hana"][:500], "下人", "", "ある 日の\n暮方"):
        for cfg in (CFG, DedupConfig(ngram=3, num_perm=64, seed=42)):
            reference = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=shingle_hash)
            reference.update_batch(shingles(text, cfg.ngram))
            assert np.array_equal(reference.hashvalues, signature(text, cfg)), text[:10]
    assert shingles("下人", 5) == ["下人"] and shingles("ある 日の暮方", 5) == ["ある日の暮", "る日の暮方"]


def test_cross_crawl_copy_is_dropped_and_oldest_kept(texts):
    def crawl(url: str, fetched_at: str) -> Document:
        return Document.new(source="aozora", url=url, title="羅生門", text=texts["rashomon"], fetched_at=fetched_at)

    for old_url, new_url in [
        ("https://www.aozora.gr.jp/cards/000879/card127.html", "https://mirror.example.jp/aozora/127.html"),
        ("https://mirror.example.jp/aozora/127.html", "https://www.aozora.gr.jp/cards/000879/card127.html"),
    ]:
        old, new = crawl(old_url, "2024-05-01T00:00:00Z"), crawl(new_url, "2025-05-01T00:00:00Z")
        assert old.id != new.id
        records = [make_record(d, d.text, CFG, priority=(d.fetched_at, 0, d.id)) for d in (new, old)]
        assert records[0].meta == {"title": "羅生門", "url": new_url, "chars": len(texts["rashomon"])}
        assert deduplicate(records, CFG) == {new.id: ("exact_duplicate", old.id)}
        # the later crawl's text was edited a little: still a duplicate of the old one
        edited = Document.new(
            source="aozora",
            url=new_url,
            title="羅生門",
            text=edit_sentences(texts["rashomon"], 0.05),
            fetched_at="2025-05-01T00:00:00Z",
        )
        records = [make_record(d, d.text, CFG, priority=(d.fetched_at, 0, d.id)) for d in (edited, old)]
        assert deduplicate(records, CFG) == {edited.id: ("near_duplicate", old.id)}

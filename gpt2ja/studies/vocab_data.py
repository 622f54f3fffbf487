"""The vocabulary study's data: the corpus with the author held out, the training pool, the evaluation texts.

Each is an artifact with a manifest (a fingerprint of its settings and of the
corpus's manifest), rebuilt only when missing, partial or stale::

    ensure_corpus(cfg, say)                 # files source → clean, the held-out author in validation
    ensure_pool(cfg, corpus, say)           # {root}/pool/train: paragraph chunks sampled by hash
    ensure_eval_texts(cfg, corpus, say)     # {root}/eval-texts/{validation,heldout}/validation
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpt2ja.infra import storage
from gpt2ja.infra.stage import run_stage, verify
from gpt2ja.studies.common import StudyError
from gpt2ja.studies.vocab_report import HELDOUT, VALIDATION

if TYPE_CHECKING:
    from gpt2ja.studies.vocab import VocabStudyConfig

STAGE_POOL = "study-pool"
STAGE_EVAL_TEXTS = "study-eval-texts"
POOL_SALT = "gpt2ja-study-pool-v1"
VERSION = 1


def _norm(name: str) -> str:
    return name.replace(" ", "").replace("\u3000", "")


def ensure_corpus(cfg: VocabStudyConfig, say: Callable[[str], None]) -> dict:
    """Crawl the source folder and clean it with the author held out (both skip when complete); the manifest."""
    from gpt2ja.corpus.clean import CleanConfig, run_clean
    from gpt2ja.corpus.split import SplitConfig
    from gpt2ja.crawler.files import crawl_files

    existing = _manifest(cfg.corpus, "corpus")
    if existing is not None:
        held = {_norm(a) for a in (existing.get("config", {}).get("split", {}) or {}).get("holdout_authors", [])}
        if _norm(cfg.holdout_author) not in held:
            raise StudyError(
                f"corpus {cfg.corpus} was cleaned without holding out {cfg.holdout_author} (its train "
                "split may hold that author's works); set corpus to a new directory and the study "
                "builds it from source"
            )
    if not storage.is_gcs(cfg.source) and not os.path.isdir(cfg.source):
        raise StudyError(
            f"source {cfg.source}: not a directory; set source to the folder of texts (e.g. ../shared/aozora-bulk)"
        )
    say(f"corpus: files source {cfg.source} → clean {cfg.corpus} (held out: {', '.join(cfg.holdout_names)})")
    raw = crawl_files(cfg.source, root=cfg.root, crawl_id=cfg.crawl_id)
    run_clean(
        CleanConfig(
            inputs=[raw],
            out=cfg.corpus,
            workers=cfg.clean_workers,
            split=SplitConfig(holdout_authors=cfg.holdout_names, validation_fraction=cfg.validation_fraction),
        )
    )
    return storage.read_manifest(cfg.corpus)


def _manifest(uri: str, what: str) -> dict | None:
    try:
        return storage.read_manifest(uri)
    except storage.StorageError as err:
        raise StudyError(f"{what} {uri}: {err}") from None


def chunks(text: str, limit: int) -> list[str]:
    """``text`` cut at line ends into pieces of at most ``limit`` characters (a longer line is cut hard).

    >>> chunks("一行目。\\n二行目。\\n三行目。", 10)
    ['一行目。\\n二行目。\\n', '三行目。']
    """
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if current:
                out.append(current)
                current = ""
            out.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) > limit:
            out.append(current)
            current = ""
        current += line
    if current:
        out.append(current)
    return [c for c in out if c.strip()]


def _piece(doc, index: int, text: str, **meta):
    from gpt2ja.corpus.document import Document

    digest = hashlib.sha256(f"{doc.id}:{index}".encode()).hexdigest()[:32]
    return Document(
        id=digest,
        source=doc.source,
        url=f"{doc.url}#chunk{index}",
        title=doc.title,
        author=doc.author,
        text=text,
        license=doc.license,
        fetched_at=doc.fetched_at,
        meta={"study_chunk_of": doc.id, "chunk": index, **meta},
    )


def _publish(
    out_uri: str, split_docs: dict[str, list], stage: str, config: dict, inputs: list[dict], counts: dict
) -> None:
    """Write documents as a clean-corpus-like artifact (``{split}/part-*.jsonl.gz``) through run_stage."""
    from gpt2ja.corpus.jsonl import ShardWriter

    def build() -> dict:
        for split, docs in split_docs.items():
            storage.delete(storage.join(out_uri, split))  # an unfinished earlier attempt
            with ShardWriter(storage.join(out_uri, split), max_docs=2000) as writer:
                for doc in docs:
                    writer.write(doc)
        files = [
            storage.file_info(u, root=out_uri) for u in storage.list_files(out_uri) if not u.endswith(storage.MANIFEST)
        ]
        return storage.build_manifest(stage=stage, config=config, inputs=inputs, counts=counts, files=files, timings={})

    run_stage(
        stage,
        out_uri,
        fingerprint=storage.fingerprint(config, inputs),
        build=build,
        inputs=[m["uri"] for m in inputs if m.get("uri")],
    )


def _up_to_date(out_uri: str, config: dict, inputs: list[dict]) -> bool:
    """The study's own artifacts skip as the stages do: a manifest that verifies (gpt2ja.infra.stage.verify)."""
    return not verify(out_uri, storage.fingerprint(config, inputs))[1]


def ensure_pool(cfg: VocabStudyConfig, corpus: dict, say: Callable[[str], None]) -> str:
    """The training text of every model: paragraph chunks of the train split kept by a hash of their id.

    The kept share is ``pool_margin × train_characters ÷`` the train split's
    characters, so the pool is a little larger than any run needs (no text is
    seen twice) and spread over the whole corpus rather than a few long works.
    """
    from gpt2ja.corpus.jsonl import read_documents
    from gpt2ja.corpus.split import id_fraction

    out = storage.join(cfg.root, "pool")
    total = corpus["counts"]["splits"]["train"]["characters"]
    fraction = min(1.0, cfg.pool_margin * cfg.train_characters / max(1, total))
    config = {"version": VERSION, "fraction": fraction, "chunk_chars": cfg.pool_chunk_chars, "salt": POOL_SALT}
    if _up_to_date(out, config, [corpus]):
        return out
    kept, chars = [], 0
    for doc in read_documents(storage.join(cfg.corpus, "train")):
        for i, text in enumerate(chunks(doc.text, cfg.pool_chunk_chars)):
            if id_fraction(f"{doc.id}:{i}", POOL_SALT) < fraction:
                kept.append(_piece(doc, i, text))
                chars += len(text)
    if chars < cfg.train_characters:
        say(
            f"pool: only {chars:,} characters for a budget of {cfg.train_characters:,}: the runs will see some "
            "text twice (the train split is small for this budget)"
        )
    _publish(
        out,
        {"train": kept},
        STAGE_POOL,
        config,
        [corpus],
        {"documents": len(kept), "characters": chars, "fraction": fraction},
    )
    say(f"pool: {len(kept):,} chunks, {chars:,} characters ({fraction:.2%} of the train split) → {out}")
    return out


def ensure_eval_texts(cfg: VocabStudyConfig, corpus: dict, say: Callable[[str], None]) -> dict[str, str]:
    """The two evaluation texts, from the validation split: other authors' documents, and the held-out author's.

    Documents in id order, at most ``eval_chunk_chars`` of each (cut at a line
    end), until ``eval_characters``; each piece is scored as its own document.
    """
    from gpt2ja.corpus.jsonl import read_documents

    uris = {
        VALIDATION: storage.join(cfg.root, "eval-texts", VALIDATION),
        HELDOUT: storage.join(cfg.root, "eval-texts", HELDOUT),
    }
    config = {
        "version": VERSION,
        "characters": cfg.eval_characters,
        "chunk_chars": cfg.eval_chunk_chars,
        "holdout": sorted(_norm(n) for n in cfg.holdout_names),
    }
    if all(_up_to_date(u, {**config, "text": name}, [corpus]) for name, u in uris.items()):
        return uris
    held = {_norm(n) for n in cfg.holdout_names}
    docs = sorted(read_documents(storage.join(cfg.corpus, VALIDATION)), key=lambda d: d.id)
    groups = {
        HELDOUT: [d for d in docs if _norm(d.author) in held],
        VALIDATION: [d for d in docs if _norm(d.author) not in held],
    }
    if not groups[HELDOUT]:
        authors = sorted({d.author for d in docs if d.author})
        raise StudyError(
            f"holdout_author {cfg.holdout_author}: no document of that author in {cfg.corpus}'s "
            f"validation split (authors there: {', '.join(authors[:12]) or 'none'}); use the name as "
            "the corpus spells it, or add the spelling to holdout_aliases"
        )
    if not groups[VALIDATION]:
        raise StudyError(
            f"corpus {cfg.corpus}: its validation split holds only the held-out author; "
            "raise split.validation_fraction in the clean config"
        )
    for name, group in groups.items():
        pieces, chars = [], 0
        for doc in group:
            if chars >= cfg.eval_characters:
                break
            first = chunks(doc.text, cfg.eval_chunk_chars)
            if not first:
                continue
            text = first[0][: cfg.eval_characters - chars]
            pieces.append(_piece(doc, 0, text, study_eval=name))
            chars += len(text)
        if chars < cfg.eval_characters:
            say(f"eval texts: {name} has only {chars:,} of the {cfg.eval_characters:,} characters asked for")
        _publish(
            uris[name],
            {VALIDATION: pieces},
            STAGE_EVAL_TEXTS,
            {**config, "text": name},
            [corpus],
            {"documents": len(pieces), "characters": chars},
        )
        # the evaluation reads the split folder: {uri}/validation
    return uris


def eval_split(uri: str) -> str:
    return storage.join(uri, VALIDATION)

"""One Prefect flow per data stage: crawl, clean, tokenizer, shards.

Glue only: each ``@task`` calls the stage's package function, which decides by
itself whether its output is up to date (manifest fingerprint) and skips if so.
A task reads the output manifest before and after the call: an unchanged manifest
means the stage skipped, and it logs ``skipped: up to date``. Tasks return
``{"uri", "skipped"}``, never data; each stage publishes a table artifact with
its counts. Retries (with backoff) only on the crawl, the one stage doing network
I/O. Heavy libraries (Scrapy, TensorFlow, MeCab) are imported by the stages inside
the tasks, never when this module is imported.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.config import CleanSection, CrawlEntry, FilesCrawl, SpiderCrawl, TokenizerSection
from infra import storage
from tokenization.shards import ShardsConfig


class StageError(RuntimeError):
    """A stage refused its input or config (one line); retrying would not help."""


def _created(uri: str) -> tuple | None:
    m = storage.read_manifest(uri)
    return None if m is None else (m.get("fingerprint"), m.get("created_at"))


def _outcome(stage: str, uri: str, before: tuple | None) -> dict:
    """``{"uri", "skipped"}``: the stage skipped when its manifest is the one it found."""
    after = _created(uri)
    if after is None:
        raise StageError(f"{stage}: {uri} has no manifest after the stage ran; the stage did not finish")
    skipped = before == after
    get_run_logger().info("%s %s: %s", stage, uri, "skipped: up to date" if skipped else "built")
    return {"uri": uri, "skipped": skipped}


def _call(stage: str, fn, *args, **kwargs):
    """Run a stage function; its one-line ``SystemExit("error: …")`` becomes a :class:`StageError`."""
    try:
        return fn(*args, **kwargs)
    except SystemExit as err:
        raise StageError(f"{stage}: {str(err.code).removeprefix('error: ')}") from None


def _key(*parts: str) -> str:
    """An artifact key (lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _table(key: str, rows: list[dict], description: str) -> None:
    create_table_artifact(key=key, table=rows, description=description)


def _drops_rows(counts: dict) -> list[dict]:
    return [{"measure": f"dropped: {reason}", "value": n} for reason, n in sorted((counts.get("drops") or {}).items())]


def _not_stage_error(task, task_run, state) -> bool:
    """Retry network and storage failures, not a refused config or input."""
    try:
        state.result()
    except StageError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


# ----------------------------------------------------------------- crawl


def _mirror_port(manifest: dict | None) -> int | None:
    """The port a finished mirror crawl was served on (its start URLs record it)."""
    urls = ((manifest or {}).get("config") or {}).get("start_urls") or []
    return urllib.parse.urlsplit(urls[0]).port if urls else None


@task(retries=2, retry_delay_seconds=[10, 30], retry_condition_fn=_not_stage_error, cache_policy=NO_CACHE,
      task_run_name="crawl-{entry.source}-{entry.crawl_id}")
def crawl_spider(entry: SpiderCrawl, root: str) -> dict:
    """One Scrapy crawl in its own process; with ``serve_mirror``, the mirror is served while it runs.

    A mirror's port is part of the crawl's start URLs, hence of its fingerprint: a
    rerun serves on the port the finished crawl used, so the crawl skips itself;
    when that port is taken (or there is no finished crawl) a fresh port is used
    and the mirror is crawled again from scratch (seconds: it is local).
    """
    from crawler.runner import crawl_in_subprocess

    if entry.serve_mirror is None:
        cfg = entry.crawl_config(root)
        before = _created(cfg.out_uri)
        _call("crawl", crawl_in_subprocess, cfg)
        result = _outcome("crawl", cfg.out_uri, before)
    else:
        from crawler.mirror import MirrorServer

        out = entry.crawl_config(root, "http://127.0.0.1").out_uri
        port = _mirror_port(storage.read_manifest(out))
        try:
            server = MirrorServer(entry.serve_mirror, port=port or 0)
        except OSError:
            get_run_logger().warning("port %s of the earlier mirror crawl is taken: crawling afresh", port)
            server, port = MirrorServer(entry.serve_mirror), None
        with server:
            cfg = entry.crawl_config(root, server.url("/"))
            if port is None:  # a new address: an earlier output or state cannot be reused
                storage.delete(cfg.out_uri)
                storage.delete(cfg.state_path)
            before = _created(cfg.out_uri)
            get_run_logger().info("serving %s at %s", entry.serve_mirror, server.url("/"))
            _call("crawl", crawl_in_subprocess, cfg)
        result = _outcome("crawl", cfg.out_uri, before)
    _crawl_artifact(entry.source, entry.crawl_id, result["uri"])
    return result


@task(retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=_not_stage_error, cache_policy=NO_CACHE,
      task_run_name="crawl-files-{entry.crawl_id}")
def crawl_directory(entry: FilesCrawl, root: str) -> dict:
    """A directory of files turned into a raw crawl (storage I/O only)."""
    from crawler.files import crawl_files

    out = entry.out_uri(root)
    before = _created(out)
    _call("crawl", crawl_files, entry.directory, root, entry.crawl_id, entry.part_docs)
    result = _outcome("crawl", out, before)
    _crawl_artifact("files", entry.crawl_id, out)
    return result


def _crawl_artifact(source: str, crawl_id: str, uri: str) -> None:
    c = storage.read_manifest(uri)["counts"]
    rows = [{"measure": k, "value": c[k]} for k in ("documents", "characters", "pages_fetched", "files_read") if k in c]
    _table(_key("crawl", source, crawl_id), rows + _drops_rows(c), f"crawl {source}/{crawl_id}: {uri}")


@flow(name="crawl", log_prints=True)
def crawl_flow(root: str, crawl: list[CrawlEntry]) -> list[dict]:
    """Run every crawl of the config (one after another: each is I/O-bound and polite); returns their outcomes."""
    results = []
    for entry in crawl:
        t = crawl_directory if isinstance(entry, FilesCrawl) else crawl_spider
        results.append(t(entry, root))
    return results


# ----------------------------------------------------------------- clean


@task(cache_policy=NO_CACHE)
def clean_task(inputs: list[str], out: str, settings: CleanSection) -> dict:  # type: ignore[valid-type]
    from corpus.clean import run_clean

    before = _created(out)
    _call("clean", run_clean, settings.clean_config(inputs, out))
    result = _outcome("clean", out, before)
    c = storage.read_manifest(out)["counts"]
    rows = [{"measure": "documents in", "value": c["documents_in"]},
            *({"measure": f"{s} documents", "value": v["documents"]} for s, v in c["splits"].items()),
            {"measure": "characters out", "value": c["characters_out"]}]
    _table(_key("clean", os.path.basename(out.rstrip("/"))), rows + _drops_rows(c), f"clean corpus {out}")
    return result


@flow(name="clean", log_prints=True)
def clean_flow(inputs: list[str], out: str, settings: CleanSection) -> dict:  # type: ignore[valid-type]
    """Notation, normalisation, quality filters, dedup and split of the raw crawls into one corpus."""
    return clean_task(inputs, out, settings)


# ----------------------------------------------------------------- tokenizer


@task(cache_policy=NO_CACHE)
def tokenizer_task(corpus_uri: str, out: str, settings: TokenizerSection) -> dict:
    from tokenization.train import train_tokenizer

    before = _created(out)
    _call("tokenizer", train_tokenizer, corpus_uri, settings.kind, settings.vocab_size, out,
          model_type=settings.model_type, sample_sentences=settings.sample_sentences)
    result = _outcome("tokenizer", out, before)
    m = storage.read_manifest(out)
    stats, counts = m.get("stats") or {}, m.get("counts") or {}
    rows = [{"measure": "kind", "value": m.get("kind")},
            *({"measure": k, "value": v} for k, v in counts.items() if not isinstance(v, dict)),
            *({"measure": k, "value": v} for k, v in stats.items() if not isinstance(v, dict))]
    _table(_key("tokenizer", os.path.basename(out.rstrip("/"))), rows, f"tokenizer {out}")
    return result


@flow(name="tokenizer", log_prints=True)
def tokenizer_flow(corpus_uri: str, out: str, settings: TokenizerSection) -> dict:
    """Train a tokenizer on the corpus's train split; statistics on its validation split."""
    return tokenizer_task(corpus_uri, out, settings)


# ----------------------------------------------------------------- shards


@task(cache_policy=NO_CACHE)
def shards_task(corpus_uri: str, tokenizer_uri: str, out: str, settings: ShardsConfig) -> dict:
    from tokenization.shards import ShardsError, write_shards

    before = _created(out)
    try:
        _call("shards", write_shards, corpus_uri, tokenizer_uri, out, settings)
    except ShardsError as err:
        raise StageError(f"shards: {err}") from None
    result = _outcome("shards", out, before)
    c = storage.read_manifest(out)["counts"]
    rows = [{"split": s, **v} for s, v in c["splits"].items()]
    _table(_key("shards", os.path.basename(out.rstrip("/"))), rows, f"TFRecord shards {out} ({c['shards']} files)")
    return result


@flow(name="shards", log_prints=True)
def shards_flow(corpus_uri: str, tokenizer_uri: str, out: str, settings: ShardsConfig) -> dict:
    """Encode the corpus, pack fixed-length examples and write GZIP TFRecord shards."""
    return shards_task(corpus_uri, tokenizer_uri, out, settings)

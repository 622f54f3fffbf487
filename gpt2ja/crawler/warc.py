"""The ``warc`` source: WARC and WET files (Common Crawl's, or any archive's) become raw Documents.

Each input file is read record by record (:mod:`gpt2ja.crawler.warc_records`: warcio
parses the records, the gzip members are walked there, so one damaged record
costs only itself):

* ``response`` records (WARC): an HTTP 200 HTML page becomes the main text of the
  page, exactly as the ``web`` spider makes it (:mod:`gpt2ja.crawler.extract.web`: the
  declared charset, else detection among UTF-8 / cp932 / EUC-JP; trafilatura;
  the kana-ratio language check);
* ``conversion`` records (WET): UTF-8 plain text, with the same language check;
* other records (``warcinfo``, ``request``, ``metadata``, ``revisit``) are counted
  under ``counts.records`` and skipped.

Every page that gives no document is counted under a named reason
(:data:`DROPS`). Documents have ``source`` ``web`` (they are web pages: the
``web`` quality preset cleans them, and a page also fetched by our own ``web``
crawl has the same id, so clean keeps one copy), ``url`` the record's
``WARC-Target-URI`` (its same-site canonical link when it has one),
``fetched_at`` its ``WARC-Date``, and ``meta`` its ``WARC-Record-ID``, file and
byte offset.

Output: ``{root}/raw/warc/{crawl_id}/part-NNNNN.jsonl.gz``, part NNNNN from input
file NNNNN (a file that keeps nothing has no part), built through
:func:`gpt2ja.infra.stage.run_stage`. Each file's completion record
``_work/NNNNN.json`` is written after its part; a rerun after a kill redoes only
the files without a valid record. The files run in parallel: a local process
pool (``workers``) or, from the flow, one task per file on the configured
task runner (``map_parts``, :mod:`gpt2ja.flows.runners`).

Inputs (:func:`expand_paths`): local files and folders, ``gs://`` objects and
prefixes, ``http(s)://`` file URLs, and path listings such as Common Crawl's
``wet.paths.gz`` (:mod:`gpt2ja.crawler.warc_inputs`: HEAD for sizes, streamed reads
resumed after a dropped connection, ``s3://`` refused with its https URL).

Example::

    gpt2ja crawl warc CC-MAIN-…-00000.warc.gz gs://bucket/wet/ --root data --crawl-id cc-sample
    gpt2ja crawl warc https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-10/wet.paths.gz --first 10
    python -m gpt2ja.crawler.warc make-demo examples/warc/aozora-mirror.warc.gz   # the demo's archive
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.corpus.document import Document, canonical_url
from gpt2ja.corpus.jsonl import ShardWriter, part_name
from gpt2ja.crawler.extract.web import PageRejected, decode_html, kana_ratio, page_from_html
from gpt2ja.crawler.runner import CrawlConfig, default_crawl_id
from gpt2ja.crawler.warc_inputs import (
    DEFAULT_PATHS_BASE,
    SUFFIXES,
    Retry,
    WarcError,
    head_size,
    is_archive,
    is_http,
    is_listing,
    listing_inputs,
    open_input,
    refuse_s3,
)
from gpt2ja.crawler.warc_records import iter_records
from gpt2ja.infra import storage
from gpt2ja.infra.stage import run_stage

logger = logging.getLogger("gpt2ja.crawl")

WORK_DIR = "_work"
#: what a record can be dropped for (the first five as the ``web`` spider names them)
DROPS = (
    "not_html",
    "empty_page",
    "bad_encoding",
    "no_main_content",
    "not_japanese",
    "empty_text",
    "too_short",
    "duplicate_url",
    "too_large",
    "http_<status>",
    "malformed_record",
    "bad_gzip",
    "truncated_gzip",
)
VERSION = 1  # bump when a change to the extraction should rebuild finished outputs


def _default(name: str):
    """A setting shared with the ``web`` spider: its default lives in ``CrawlConfig`` only."""
    return CrawlConfig.model_fields[name].get_default(call_default_factory=True)


class WarcConfig(BaseModel):
    """One read of WARC/WET files into ``{root}/raw/warc/{crawl_id}``.

    Example::

        WarcConfig(paths=["crawl-data/CC-MAIN-2024-10/…/00000.warc.gz"], root="data", crawl_id="cc-sample")
        WarcConfig(paths=["https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-10/wet.paths.gz"], limit=10,
                   crawl_id="cc-2024-10")
    """

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(
        min_length=1,
        description="WARC/WET files (.warc.gz, .warc, .wet.gz, .wet), folders "
        "of them, gs:// objects and prefixes, http(s):// file URLs, "
        "or path listings (warc.paths.gz, wet.paths.gz, *.paths)",
    )
    root: str = Field("data", description="run root: a local directory or gs://bucket/prefix")
    crawl_id: str = Field(
        default_factory=default_crawl_id,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="names the output {root}/raw/warc/{crawl_id}; the same id resumes",
    )
    min_kana_ratio: float = Field(
        _default("min_kana_ratio"),
        ge=0,
        le=1,
        description="pages with fewer hiragana+katakana are not Japanese (not_japanese)",
    )
    min_chars: int = Field(_default("min_chars"), ge=1, description="shorter texts are dropped (too_short)")
    max_bytes: int = Field(
        _default("download_maxsize"), gt=0, description="records with a larger body are dropped (too_large)"
    )
    workers: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        le=256,
        description="processes reading files in parallel (one file each)",
    )
    paths_base: str = Field(
        DEFAULT_PATHS_BASE,
        min_length=1,
        description="what the relative paths of a path listing are joined to (a URL, gs:// prefix or folder)",
    )
    offset: int = Field(0, ge=0, description="entries skipped at the start of each path listing")
    limit: int | None = Field(
        None,
        ge=1,
        description="at most this many entries of each path listing, after "
        "`offset` (--first); a Common Crawl snapshot lists ~90,000",
    )
    http_retries: int = Field(
        5,
        ge=0,
        le=100,
        description="retries in a row of a failed HTTP request (connection, timeout, 5xx, 429), from the byte reached",
    )
    http_backoff_s: float = Field(
        2.0, ge=0, le=120, description="the wait before the first retry, doubled for each next one (at most 120 s)"
    )
    http_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="seconds a request may wait for an answer or a byte before it counts as failed"
    )

    @model_validator(mode="after")
    def _selection_needs_a_listing(self):
        if (self.offset or self.limit is not None) and not any(is_listing(p) for p in self.paths):
            raise ValueError(
                "first/limit and offset select entries of a path listing (warc.paths.gz, wet.paths.gz, "
                "*.paths), and none of the paths is one; give a listing, or leave them out"
            )
        return self

    @property
    def retry(self) -> Retry:
        return Retry(self.http_retries, self.http_backoff_s, self.http_timeout_s)

    @property
    def out_uri(self) -> str:
        return storage.join(self.root, "raw", "warc", self.crawl_id)

    def fingerprint_config(self, inputs: list[tuple[str, int]]) -> dict:
        """What defines the output: the input files (and their sizes), in order, the listings' selection when
        there is a listing, and the extraction settings."""
        listed = any(is_listing(p) for p in self.paths)
        return {
            "source": "warc",
            "version": VERSION,
            "inputs": [list(i) for i in inputs],
            **self.model_dump(include={"crawl_id", "min_kana_ratio", "min_chars", "max_bytes"}),
            **({"listing": self.model_dump(include={"paths_base", "offset", "limit"})} if listed else {}),
        }


# ----------------------------------------------------------------------------- inputs


def expand_paths(
    paths: list[str],
    *,
    paths_base: str = DEFAULT_PATHS_BASE,
    offset: int = 0,
    limit: int | None = None,
    retry: Retry = Retry(),
) -> list[tuple[str, int]]:
    """``[(file URI, size)]``: the given files, the archives in the given folders and prefixes (sorted), and
    the selected entries of the given path listings (in their order), each file once.

    A file named explicitly is read whatever its name; inside a folder only
    ``.warc(.gz)`` and ``.wet(.gz)`` files count. A name ending in ``.paths.gz`` or
    ``.paths`` is a listing (:func:`gpt2ja.crawler.warc_inputs.listing_inputs`); an
    ``http(s)://`` file's size comes from a HEAD request. A missing path, an
    ``s3://`` URI or a folder without archives raises :class:`WarcError` (one line).
    """
    found: list[tuple[str, int]] = []
    for path in paths:
        if path.lower().startswith("s3://"):
            refuse_s3(path)
        if is_listing(path):
            found.extend(listing_inputs(path, paths_base, offset, limit, retry))
            continue
        if is_http(path):
            found.append((path, head_size(path, retry)))
            continue
        if storage.is_gcs(path):
            listed = storage.list_sizes(path)
            if listed:
                found.extend(sorted((u, n) for u, n in listed.items() if is_archive(u)))
                if not any(is_archive(u) for u in listed):
                    raise WarcError(f"{path}: no {'/'.join(SUFFIXES)} objects under this prefix")
                continue
            try:
                found.append((path, storage.size(path)))
            except storage.StorageError:
                raise WarcError(f"{path}: no such object or prefix; give WARC/WET files or a prefix holding them")
            continue
        local = os.path.abspath(os.path.expanduser(path))
        if os.path.isfile(local):
            found.append((local, os.path.getsize(local)))
        elif os.path.isdir(local):
            inside = sorted(
                os.path.join(d, n)
                for d, _, names in os.walk(local)
                for n in names
                if is_archive(n) and not n.startswith(".")
            )
            if not inside:
                raise WarcError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
            found.extend((p, os.path.getsize(p)) for p in inside)
        else:
            raise WarcError(
                f"{path}: no such file or folder; give WARC/WET files (.warc.gz, .wet.gz), "
                "folders of them, gs:// or https:// URIs, or a warc.paths.gz listing"
            )
    seen, unique = set(), []
    for uri, size in found:  # a file named twice (directly and by its folder) is read once
        if uri not in seen:
            seen.add(uri)
            unique.append((uri, size))
    return unique


# ----------------------------------------------------------------------------- records → documents


class Drop(Exception):
    """A record that gives no document, and the named reason it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason = reason


def _same_site(url: str, site: str) -> bool:
    host, base = urlsplit(url).hostname or "", urlsplit(site).hostname or ""
    return bool(base) and (host == base or host.endswith("." + base))


def _body(record, cfg: WarcConfig) -> bytes:
    body = record.content_stream().read(cfg.max_bytes + 1)  # chunked and gzip/br transfer undone by warcio
    if len(body) > cfg.max_bytes:
        raise Drop("too_large", f"more than {cfg.max_bytes:,} bytes")
    return body


def response_document(record, cfg: WarcConfig) -> Document:
    """A WARC ``response`` record → a Document, as the ``web`` spider makes one; else :class:`Drop`."""
    url = record.rec_headers.get_header("WARC-Target-URI") or ""
    if record.http_headers is None:  # dns:, whois: … responses carry no HTTP message
        raise Drop("not_html", record.rec_headers.get_header("Content-Type") or "no HTTP response")
    status = record.http_headers.get_statuscode()
    if status != "200":
        raise Drop(f"http_{status}")
    content_type = record.http_headers.get_header("Content-Type") or ""
    if content_type and "html" not in content_type.lower():
        raise Drop("not_html", content_type)
    body = _body(record, cfg)
    if not body.strip():
        raise Drop("empty_page")
    try:
        html, encoding, source = decode_html(body, content_type, url)
        page = page_from_html(html, url, encoding, source)
    except PageRejected as exc:
        raise Drop(exc.reason, str(exc).split(": ", 1)[-1]) from None
    if page.kana_ratio < cfg.min_kana_ratio:
        raise Drop("not_japanese", f"kana ratio {page.kana_ratio:.3f}")
    doc_url = url
    if page.canonical_url:
        candidate = urljoin(url, page.canonical_url)
        if _same_site(candidate, url):
            doc_url = candidate
    return Document.new(
        source="web",
        url=canonical_url(doc_url),
        text=page.text,
        title=page.title,
        author=page.author,
        license=page.meta.get("license", ""),
        meta={
            "fetched_url": url,
            "encoding": page.encoding,
            "encoding_source": page.encoding_source,
            "kana_ratio": page.kana_ratio,
            **{k: v for k, v in page.meta.items() if k != "license"},
        },
    )


def conversion_document(record, cfg: WarcConfig) -> Document:
    """A WET ``conversion`` record (UTF-8 plain text) → a Document; else :class:`Drop`."""
    url = record.rec_headers.get_header("WARC-Target-URI") or ""
    body = _body(record, cfg)
    if not body.strip():
        raise Drop("empty_page")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Drop("bad_encoding", f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    ratio = round(kana_ratio(text), 4)
    if ratio < cfg.min_kana_ratio:
        raise Drop("not_japanese", f"kana ratio {ratio:.3f}")
    meta = {"fetched_url": url, "kana_ratio": ratio}
    for header, key in (("WARC-Refers-To", "warc_refers_to"), ("WARC-Identified-Content-Language", "languages")):
        if record.rec_headers.get_header(header):
            meta[key] = record.rec_headers.get_header(header)
    return Document.new(source="web", url=canonical_url(url), text=text.strip(), meta=meta)


READERS: dict[str, Callable[[Any, WarcConfig], Document]] = {
    "response": response_document,
    "conversion": conversion_document,
}


def documents(fh: IO[bytes], where: str, cfg: WarcConfig, drops: Counter, records: Counter) -> Iterator[Document]:
    """The documents of one WARC/WET stream; every record that gives none counted in ``drops`` by reason."""
    seen: set[str] = set()
    for offset, record, problem in iter_records(fh, 2 * cfg.max_bytes + (1 << 20)):
        if problem:
            drops[problem] += 1
            logger.warning("drop %s: %s at byte %d", problem, where, offset)
            continue
        kind = record.rec_type or "unknown"
        records[kind] += 1
        if kind not in READERS:
            continue
        url = record.rec_headers.get_header("WARC-Target-URI") or f"{where}#{offset}"
        try:
            doc = READERS[kind](record, cfg)
            doc.text = doc.text.strip("\n")
            if not doc.text.strip():
                raise Drop("empty_text")
            if len(doc.text) < cfg.min_chars:
                raise Drop("too_short", f"{len(doc.text)} characters")
            if doc.id in seen:
                raise Drop("duplicate_url", doc.url)
        except Drop as drop:
            drops[drop.reason] += 1
            logger.warning("drop %s: %s%s", drop.reason, url, f" ({drop})" if str(drop) else "")
            continue
        except Exception as exc:  # noqa: BLE001 - a broken HTTP message or transfer encoding in one record
            if isinstance(exc, (MemoryError, KeyboardInterrupt)):
                raise
            drops["malformed_record"] += 1
            logger.warning("drop malformed_record: %s (%s: %s)", url, type(exc).__name__, exc)
            continue
        seen.add(doc.id)
        doc.fetched_at = record.rec_headers.get_header("WARC-Date") or doc.fetched_at
        doc.meta.update(
            {
                "warc_record_id": record.rec_headers.get_header("WARC-Record-ID") or "",
                "warc_file": where,
                "warc_offset": offset,
            }
        )
        yield doc


# ----------------------------------------------------------------------------- the stage


def _record_uri(out: str, index: int) -> str:
    return storage.join(out, WORK_DIR, f"{index:05d}.json")


def read_file(job: tuple) -> dict:
    """One input file → its part ``part-{index}`` and then its completion record; returns the record.

    Runs in a worker process (or a task on the flow's task runner): ``job`` is plain data.
    """
    index, uri, size, cfg_json, out, fp = job
    cfg = WarcConfig.model_validate_json(cfg_json)
    part = storage.join(out, part_name("part", index))
    storage.delete(part)  # an earlier attempt's part, if any: this file is read again from the start
    drops: Counter = Counter()
    records: Counter = Counter()
    started = time.time()
    with (
        open_input(uri, size, cfg.retry) as fh,
        ShardWriter(out, max_docs=10**12, max_bytes=1 << 62, start_index=index) as writer,
    ):
        for doc in documents(fh, uri, cfg, drops, records):
            writer.write(doc)
    info = storage.file_info(part, root=out) if writer.published else None
    record = {
        "fingerprint": fp,
        "index": index,
        "input": uri,
        "input_bytes": size,
        "part": info,
        "documents": writer.documents,
        "characters": writer.characters,
        "records": dict(sorted(records.items())),
        "drops": dict(sorted(drops.items())),
        "seconds": round(time.time() - started, 3),
    }
    storage.write_text(_record_uri(out, index), json.dumps(record, ensure_ascii=False, sort_keys=True))
    logger.info("warc %s: %d documents, drops %s", uri, writer.documents, dict(drops))
    return record


def _valid_record(out: str, index: int, fp: str) -> dict | None:
    """The file's completion record when it is from this build and its part is there, size and sha256 intact."""
    try:
        rec = json.loads(storage.read_text(_record_uri(out, index)))
        if rec.get("fingerprint") != fp:
            return None
        if rec["part"] is not None:
            uri = storage.join(out, rec["part"]["path"])
            if storage.size(uri) != rec["part"]["bytes"] or storage.file_info(uri)["sha256"] != rec["part"]["sha256"]:
                return None
        return rec
    except (storage.StorageError, ValueError, KeyError, TypeError):
        return None  # missing, unreadable or stale: the file is read again


def _within(uri: str, folder: str) -> bool:
    if is_http(uri):
        return False
    if storage.is_gcs(uri) or storage.is_gcs(folder):
        return uri.startswith(folder.rstrip("/") + "/")
    return os.path.abspath(uri).startswith(os.path.abspath(os.path.expanduser(folder)) + os.sep)


def crawl_warc(cfg: WarcConfig, map_parts: Callable[[Callable, list, list[str]], list] | None = None) -> str:
    """Read ``cfg.paths`` into ``{root}/raw/warc/{crawl_id}/``; returns that URI.

    Skipped when the output's manifest matches (same files, sizes and settings).
    ``map_parts(fn, items, names)`` runs the files (default: a process pool of
    ``cfg.workers``); the output is the same whatever runs them.
    """
    inputs = expand_paths(cfg.paths, paths_base=cfg.paths_base, offset=cfg.offset, limit=cfg.limit, retry=cfg.retry)
    out = cfg.out_uri
    config = cfg.fingerprint_config(inputs)
    fp = storage.fingerprint(config)
    started = time.time()
    redone: list[str] = []

    def build() -> dict:
        done = {i: rec for i in range(len(inputs)) if (rec := _valid_record(out, i, fp)) is not None}
        todo = [(i, uri, size, cfg.model_dump_json(), out, fp) for i, (uri, size) in enumerate(inputs) if i not in done]
        if todo:
            from gpt2ja.infra.parallel import pool_map

            mapper = map_parts or pool_map(cfg.workers)
            for rec in mapper(read_file, todo, [f"file-{job[0]:05d}" for job in todo]):
                done[rec["index"]] = rec
            redone.extend(job[1] for job in todo)
        recs = [done[i] for i in range(len(inputs))]
        drops, kinds = Counter(), Counter()
        for rec in recs:
            drops.update(rec["drops"])
            kinds.update(rec["records"])
        counts = {
            "files_read": len(recs),
            "documents": sum(r["documents"] for r in recs),
            "characters": sum(r["characters"] for r in recs),
            "records": dict(sorted(kinds.items())),
            "drops": dict(sorted(drops.items())),
        }
        if counts["documents"] == 0:
            top = ", ".join(f"{k} {v}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1])[:4]) or "none"
            raise WarcError(
                f"no Japanese document in {len(recs)} WARC/WET file(s) (records {dict(kinds)}; drops: "
                f"{top}); check the inputs, or lower --min-kana-ratio"
            )
        files = [r["part"] for r in recs if r["part"] is not None]
        return storage.build_manifest(
            stage="crawl",
            config=config,
            counts=counts,
            files=files,
            timings={"seconds": round(time.time() - started, 3)},
            extra={"per_file": [{"input": r["input"], "documents": r["documents"], "drops": r["drops"]} for r in recs]},
        )

    # folders and prefixes go to run_stage's check (an output inside one would be read back); a file cannot
    # hold the output, but one inside the output would be deleted by the rebuild
    inside = [uri for uri, _ in inputs if _within(uri, out)]
    if inside:
        raise WarcError(f"{inside[0]} is inside the output {out}; move it, or choose another --root or --crawl-id")
    folders = [p for p in cfg.paths if (storage.is_gcs(p) and not is_listing(p)) or os.path.isdir(p)]
    outcome = run_stage("crawl", out, fingerprint=fp, build=build, inputs=folders, keep=(WORK_DIR + "/",))
    if outcome.skipped:
        print(f"crawl warc/{cfg.crawl_id}: already complete in {out}; skipped", file=sys.stderr)
        return out
    c = outcome.manifest["counts"]
    print(
        f"crawl warc: {c['documents']} documents from {c['files_read']} file(s) "
        f"({len(redone)} read now, {c['files_read'] - len(redone)} finished earlier) → {out}",
        file=sys.stderr,
    )
    return out


if __name__ == "__main__":
    from gpt2ja.crawler.warc_demo import main

    main(sys.argv[1:])

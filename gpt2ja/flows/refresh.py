"""``corpus-refresh``: crawl what is new since the last crawl, then clean over every crawl.

Each configured crawl gets one more crawl directory per refresh,
``{root}/raw/{source}/{crawl_id}.refresh-{refresh_id}``, holding only what is new:
an Aozora refresh fetches the author pages again and skips every card that
already gave a document (see :mod:`gpt2ja.crawler.refresh` for what each source skips).
The clean stage then runs over the base crawl and all its refreshes into the
same corpus (``{root}/clean/{corpus}``); a document fetched twice keeps its
oldest copy (``duplicate_id``), so the corpus grows by exactly what is new. A
refresh that found nothing new leaves the clean inputs unchanged, so clean skips.

With ``clean: {dedup: {engine: sharded, index: auto}}`` the clean reads only the
crawls its dedup index has not consumed (this refresh's) and dedups them against
the index of every document kept before (:mod:`gpt2ja.corpus.clean_indexed`): no earlier
crawl's text is read again. The flow's result and table say which index version
the clean deduplicated against, which it produced, and how many documents it read.

The first refresh of a config with no finished crawl makes the base crawl, as
``pipeline`` would. An interrupted refresh crawl is resumed by the next refresh.

Run without a server::

    python -c "from gpt2ja.flows.config import load_config; from gpt2ja.flows.refresh import corpus_refresh; \\
               corpus_refresh(load_config('configs/pipeline-demo.yaml'))"
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from gpt2ja.flows import artifacts
from gpt2ja.flows.config import CrawlEntry, FilesCrawl, PipelineConfig, SpiderCrawl, WarcCrawl
from gpt2ja.flows.stages import (
    clean_flow,
    crawl_archives,
    crawl_directory,
    crawl_source,
    crawl_spider,
    finished_crawls,
    manifest_stamp,
    not_stage_error,
    outcome,
)
from gpt2ja.infra import storage
from gpt2ja.infra.stage import StageError


@task(cache_policy=NO_CACHE, task_run_name="plan-{entry.source}-{entry.crawl_id}")
def plan_crawl(entry: CrawlEntry, root: str, refresh_id: str) -> dict:
    """Which crawl this refresh runs for ``entry`` and which earlier crawls it skips (storage reads only)."""
    from gpt2ja.crawler.refresh import plan_refresh

    try:
        plan = plan_refresh(root, crawl_source(entry), entry.crawl_id, refresh_id)
    except ValueError as err:
        raise StageError(f"corpus-refresh: {err}") from None
    get_run_logger().info(
        "%s/%s: %s",
        crawl_source(entry),
        entry.crawl_id,
        "no base crawl yet: crawling it"
        if plan.base
        else f"{plan.crawl_id} already finished"
        if plan.done
        else f"{'resuming' if plan.resume else 'crawling'} {plan.crawl_id}, skipping the documents "
        f"of {len(plan.known)} earlier crawl(s)",
    )
    return {"crawl_id": plan.crawl_id, "base": plan.base, "known": plan.known, "done": plan.done}


@task(
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=not_stage_error,
    cache_policy=NO_CACHE,
    task_run_name="crawl-{entry.source}-{crawl_id}",
)
def crawl_increment(entry: SpiderCrawl, root: str, crawl_id: str, known: list[str]) -> dict:
    """One refresh crawl (own process) that skips the documents of the ``known`` crawls.

    With ``serve_mirror``, the mirror is served on the port the newest finished
    crawl used, so URLs (hence document ids and known pages) match; when that
    port is taken, on a fresh one, and nothing can be skipped.
    """
    from gpt2ja.crawler.refresh import crawl_history, mirror_port
    from gpt2ja.crawler.runner import crawl_in_subprocess

    history = crawl_history(root, entry.source, entry.crawl_id)
    entry = entry.model_copy(update={"crawl_id": crawl_id})
    if entry.serve_mirror is None:
        cfg = _with_known(entry.crawl_config(root), known)
        before = manifest_stamp(cfg.out_uri)
        crawl_in_subprocess(cfg, show_progress=entry.progress_interval > 0)
        result = outcome("crawl", cfg.out_uri, before)
    else:
        from gpt2ja.crawler.mirror import MirrorServer

        port = mirror_port(history)
        try:
            server = MirrorServer(entry.serve_mirror, port=port or 0)
        except OSError:
            get_run_logger().warning(
                "port %s of the earlier mirror crawls is taken: the mirror's URLs change, "
                "so this refresh fetches every page again",
                port,
            )
            server, port, known = MirrorServer(entry.serve_mirror), None, []
        with server:
            cfg = _with_known(entry.crawl_config(root, server.url("/")), known)
            if port is None:  # a new address: an interrupted session of this crawl cannot be resumed
                storage.delete(cfg.out_uri)
                storage.delete(cfg.state_path)
            before = manifest_stamp(cfg.out_uri)
            crawl_in_subprocess(cfg, show_progress=entry.progress_interval > 0)
        result = outcome("crawl", cfg.out_uri, before)
    artifacts.crawl(entry.source, crawl_id, result["uri"])
    return result


def _with_known(cfg, known: list[str]):
    from gpt2ja.crawler.refresh import known_settings

    return cfg.model_copy(update={"settings": {**cfg.settings, **known_settings(known)}})


def _run_crawl(entry: CrawlEntry, root: str, plan: dict) -> dict:
    if plan["done"]:
        return {"uri": storage.join(root, "raw", crawl_source(entry), plan["crawl_id"]), "skipped": True}
    # files and archives are read again whole (what changed in them shows in clean); spiders skip what they know
    local = {FilesCrawl: crawl_directory, WarcCrawl: crawl_archives}.get(type(entry))
    if plan["base"]:  # exactly the pipeline's crawl
        return (local or crawl_spider)(entry, root)
    if local is not None:
        return local(entry.model_copy(update={"crawl_id": plan["crawl_id"]}), root)
    return crawl_increment(entry, root, plan["crawl_id"], plan["known"])


def _documents(uri: str) -> int:
    return int(((storage.read_manifest(uri) or {}).get("counts") or {}).get("documents_out", 0))


def _dedup_index(uri: str) -> dict | None:
    """What the indexed clean recorded: ``{"against", "produced", "documents_read", "inputs_read", ...}``."""
    return (storage.read_manifest(uri) or {}).get("dedup_index")


@flow(name="corpus-refresh", log_prints=True)
def corpus_refresh(config: PipelineConfig, refresh_id: str | None = None) -> dict:
    """Crawl what is new since the last crawl (incremental), then clean over all crawls into the corpus.

    ``refresh_id`` names this refresh's crawls (default: the UTC time, e.g.
    20260105T040000Z); running the same id again does nothing new. Returns
    ``{"crawl": [{"uri", "skipped"}, ...], "clean": {"uri", "skipped"},
    "documents_before", "documents_after", "dedup_index"}`` (the last: the corpus
    manifest's ``dedup_index`` with an indexed clean, else None).
    """
    from gpt2ja.crawler.refresh import default_refresh_id

    refresh_id = refresh_id or default_refresh_id()
    crawls = []
    for entry in config.crawl:
        plan = plan_crawl(entry, config.root, refresh_id)
        crawls.append(_run_crawl(entry, config.root, plan))
    before = _documents(config.clean_uri)
    if config.clean.dedup.index is None:
        get_run_logger().info(
            "clean reads every crawl again; with clean.dedup {engine: sharded, index: auto} "
            "it reads only this refresh's"
        )
    clean = clean_flow(finished_crawls(config), config.clean_uri, config.clean)
    after = _documents(config.clean_uri)
    index = _dedup_index(config.clean_uri) if config.clean.dedup.index is not None else None
    rows = [
        *(
            {
                "measure": f"new documents in {c['uri']}",
                "value": (storage.read_manifest(c["uri"]) or {}).get("counts", {}).get("documents", 0),
            }
            for c in crawls
            if not c["skipped"]
        ),
        {"measure": "corpus documents before", "value": before},
        {"measure": "corpus documents after", "value": after},
        *(
            [
                {"measure": "dedup index", "value": f"{index['against'] or '-'} → {index['produced']}"},
                {"measure": "documents read by clean", "value": index["documents_read"]},
            ]
            if index
            else []
        ),
    ]
    create_table_artifact(
        key=artifacts.key("corpus-refresh", config.corpus),
        table=rows,
        description=f"corpus refresh {refresh_id}: {config.clean_uri}",
    )
    get_run_logger().info(
        "corpus %s: %d documents before, %d after (refresh %s)", config.clean_uri, before, after, refresh_id
    )
    return {"crawl": crawls, "clean": clean, "documents_before": before, "documents_after": after, "dedup_index": index}

"""One Prefect flow per stage: crawl, clean, tokenizer, shards, train, evaluate, generate, export.

Glue only: each ``@task`` calls the stage's package function, which decides by
itself whether its output is up to date (manifest fingerprint) and skips if so.
A task reads the output manifest before and after the call: an unchanged manifest
means the stage skipped, and it logs ``skipped: up to date``. Tasks return
``{"uri", "skipped"}``, never data; each stage publishes its artifacts in the UI
(:mod:`gpt2ja.flows.artifacts`). Retries (with backoff) only on the crawl, the one stage
doing network I/O. Heavy libraries (Scrapy, TensorFlow, MeCab, torch) are imported
by the stages inside the tasks, never when this module is imported. The clean and
shards stages run their parts where their settings' ``task_runner`` says
(:mod:`gpt2ja.flows.runners`): their own process pool, or one ``part_task`` per part on
a Prefect task runner (threads, processes, a Dask cluster).

Each flow runs alone too, e.g. from the UI or::

    train_flow("data/demo/datasets/aozora-demo/sp3000-128", "data/demo/runs/tiny-demo",
               TrainSection(preset="tiny", steps=120, batch_tokens=2048, micro_batch=16))
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from prefect import Flow, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gpt2ja.flows import artifacts
from gpt2ja.flows.config import (
    CleanSection,
    CrawlEntry,
    EvaluateSection,
    ExportSection,
    FilesCrawl,
    GenerateSection,
    PipelineConfig,
    ShardsSection,
    SpiderCrawl,
    TokenizerSection,
    TrainSection,
    WarcCrawl,
)
from gpt2ja.flows.runners import PartMapper, TaskRunnerConfig, TaskRunnerError
from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.stage import StageError, verify


class _OneLineStageErrors(logging.Filter):
    """Prefect logs a failed run's exception with its traceback; a StageError is a refusal for people: one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Gpt2jaError):
            record.exc_info, record.exc_text = None, None
        return True


_ONE_LINE = _OneLineStageErrors()
for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_ONE_LINE)


def manifest_stamp(uri: str) -> tuple | None:
    """What identifies the manifest at ``uri`` (fingerprint, created_at, build_id), or None: a rebuild changes it."""
    m = storage.read_manifest(uri)
    return None if m is None else (m.get("fingerprint"), m.get("created_at"), m.get("build_id"))


def outcome(stage: str, uri: str, before: tuple | None) -> dict:
    """``{"uri", "skipped"}``: the stage skipped when its manifest is the one it found."""
    after = manifest_stamp(uri)
    if after is None:
        raise StageError(f"{stage}: {uri} has no manifest after the stage ran; the stage did not finish")
    skipped = before == after
    get_run_logger().info("%s %s: %s", stage, uri, "skipped: up to date" if skipped else "built")
    return {"uri": uri, "skipped": skipped}


def call_stage(stage: str, fn, *args, **kwargs):
    """Run a stage function; its one-line errors (:class:`Gpt2jaError`) become a :class:`StageError` ``"{stage}: …"``.

    Not ``StorageError``: a storage failure may be transient, and the crawl retries it.
    """
    try:
        return fn(*args, **kwargs)
    except storage.StorageError:
        raise
    except Gpt2jaError as err:
        raise StageError(f"{stage}: {err}") from None


def not_stage_error(task, task_run, state) -> bool:
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


def _crawl_done(cfg) -> bool:
    """The check ``run_crawl`` starts with, made here to spare a Python + Scrapy start when nothing is to do."""
    return not verify(cfg.out_uri, storage.fingerprint(cfg.fingerprint_config()))[1]


@task(
    retries=2,
    retry_delay_seconds=[10, 30],
    retry_condition_fn=not_stage_error,
    cache_policy=NO_CACHE,
    task_run_name="crawl-{entry.source}-{entry.crawl_id}",
)
def crawl_spider(entry: SpiderCrawl, root: str) -> dict:
    """One Scrapy crawl in its own process; with ``serve_mirror``, the mirror is served while it runs.

    A mirror's port is part of the crawl's start URLs, hence of its fingerprint: a
    rerun serves on the port the finished crawl used, so the crawl skips itself;
    when that port is taken (or there is no finished crawl) a fresh port is used
    and the mirror is crawled again from scratch (seconds: it is local).
    """
    from gpt2ja.crawler.runner import crawl_in_subprocess

    show = entry.progress_interval > 0
    if entry.serve_mirror is None:
        cfg = entry.crawl_config(root)
        before = manifest_stamp(cfg.out_uri)
        if not _crawl_done(cfg):
            call_stage("crawl", crawl_in_subprocess, cfg, show_progress=show)
        result = outcome("crawl", cfg.out_uri, before)
    else:
        from gpt2ja.crawler.mirror import MirrorServer

        out = entry.crawl_config(root, "http://127.0.0.1").out_uri
        port = _mirror_port(storage.read_manifest(out))
        done = port is not None and _crawl_done(entry.crawl_config(root, f"http://127.0.0.1:{port}/"))
        if done:  # nothing to fetch: no server, no crawl process
            result = outcome("crawl", out, manifest_stamp(out))
        else:
            try:
                server = MirrorServer(entry.serve_mirror, port=port or 0)
            except OSError:
                get_run_logger().warning("port %s of the earlier mirror crawl is taken: crawling afresh", port)
                server, port = MirrorServer(entry.serve_mirror), None
            with server:
                cfg = entry.crawl_config(root, server.url("/"))
                before = manifest_stamp(cfg.out_uri)
                get_run_logger().info("serving %s at %s", entry.serve_mirror, server.url("/"))
                # a new address: an earlier output or state cannot be reused (the crawl deletes them under its lock)
                call_stage("crawl", crawl_in_subprocess, cfg, show_progress=show, fresh=port is None)
            result = outcome("crawl", cfg.out_uri, before)
    _crawl_artifact(entry.source, entry.crawl_id, result["uri"])
    return result


@task(
    retries=2,
    retry_delay_seconds=[5, 20],
    retry_condition_fn=not_stage_error,
    cache_policy=NO_CACHE,
    task_run_name="crawl-files-{entry.crawl_id}",
)
def crawl_directory(entry: FilesCrawl, root: str) -> dict:
    """A directory of files turned into a raw crawl (storage I/O only)."""
    from gpt2ja.crawler.files import crawl_files

    out = entry.out_uri(root)
    before = manifest_stamp(out)
    call_stage("crawl", crawl_files, entry.directory, root, entry.crawl_id, entry.part_docs)
    result = outcome("crawl", out, before)
    _crawl_artifact("files", entry.crawl_id, out)
    return result


@task(
    retries=2,
    retry_delay_seconds=[5, 20],
    retry_condition_fn=not_stage_error,
    cache_policy=NO_CACHE,
    task_run_name="crawl-warc-{entry.crawl_id}",
)
def crawl_archives(entry: WarcCrawl, root: str) -> dict:
    """WARC/WET files turned into a raw crawl; its files read on ``entry.task_runner`` (one task per file)."""
    from gpt2ja.crawler.warc import crawl_warc

    cfg = entry.warc_config(root)
    before = manifest_stamp(cfg.out_uri)
    with _parts_on("crawl", entry.task_runner, cfg.workers) as map_parts:
        call_stage("crawl", crawl_warc, cfg, map_parts=map_parts)
    result = outcome("crawl", cfg.out_uri, before)
    _crawl_artifact("warc", entry.crawl_id, cfg.out_uri)
    return result


def _crawl_artifact(source: str, crawl_id: str, uri: str) -> None:
    artifacts.crawl(source, crawl_id, uri)


@flow(name="crawl", log_prints=True)
def crawl_flow(root: str, crawl: list[CrawlEntry]) -> list[dict]:
    """Run every crawl of the config (one after another: each is I/O-bound and polite); returns their outcomes."""
    results = []
    for entry in crawl:
        t = (
            crawl_directory
            if isinstance(entry, FilesCrawl)
            else crawl_archives
            if isinstance(entry, WarcCrawl)
            else crawl_spider
        )
        results.append(t(entry, root))
    return results


# ----------------------------------------------------------------- the data stages' parts (clean, shards)


@task(cache_policy=NO_CACHE, task_run_name="{name}")
def part_task(stage: str, fn, item, name: str):
    """One part of a data stage (a raw part to clean, a part to write, a shard): ``fn(item)``.

    Submitted by :class:`gpt2ja.flows.runners.PartMapper` to the stage's task runner
    (threads, processes, a Dask cluster); its result is small (counts, a
    completion record), the files it writes are the output.
    """
    return call_stage(stage, fn, item)


@contextlib.contextmanager
def _parts_on(stage: str, runner: TaskRunnerConfig, workers: int):
    """The ``map_parts`` a stage's package function gets: None (its own process pool) or one task per part."""
    if runner.kind == "local":
        yield None
        return
    try:
        with PartMapper(runner, part_task, stage, workers) as map_parts:
            yield map_parts
    except TaskRunnerError as err:
        raise StageError(f"{stage}: {err}") from None


# ----------------------------------------------------------------- clean


@task(cache_policy=NO_CACHE, task_run_name="clean")
def clean_task(inputs: list[str], out: str, settings: CleanSection) -> dict:  # type: ignore[valid-type]
    """``gpt2ja.corpus.clean.run_clean``; its per-part phases on ``settings.task_runner`` (one task per part)."""
    from gpt2ja.corpus.clean import run_clean

    before = manifest_stamp(out)
    with (
        _parts_on("clean", settings.task_runner, settings.workers) as map_parts,
        artifacts.stage_progress("clean", out),
    ):
        call_stage("clean", run_clean, settings.clean_config(inputs, out), map_parts=map_parts)
    result = outcome("clean", out, before)
    artifacts.clean(out)
    return result


@flow(name="clean", log_prints=True)
def clean_flow(inputs: list[str], out: str, settings: CleanSection) -> dict:  # type: ignore[valid-type]
    """Notation, normalisation, quality filters, dedup and split of the raw crawls into one corpus."""
    return clean_task(inputs, out, settings)


# ----------------------------------------------------------------- tokenizer


@task(cache_policy=NO_CACHE, task_run_name="tokenizer")
def tokenizer_task(corpus_uri: str, out: str, settings: TokenizerSection) -> dict:
    from gpt2ja.tokenization.train import train_tokenizer

    before = manifest_stamp(out)
    call_stage(
        "tokenizer",
        train_tokenizer,
        corpus_uri,
        settings.kind,
        settings.vocab_size,
        out,
        **settings.model_dump(exclude={"kind", "vocab_size"}),
    )
    result = outcome("tokenizer", out, before)
    artifacts.tokenizer(out)
    return result


@flow(name="tokenizer", log_prints=True)
def tokenizer_flow(corpus_uri: str, out: str, settings: TokenizerSection) -> dict:
    """Train a tokenizer on the corpus's train split; statistics on its validation split."""
    return tokenizer_task(corpus_uri, out, settings)


# ----------------------------------------------------------------- shards


@task(cache_policy=NO_CACHE, task_run_name="shards")
def shards_task(corpus_uri: str, tokenizer_uri: str, out: str, settings: ShardsSection) -> dict:
    """``tokenization.shards.write_shards``; its shards built on ``settings.task_runner`` (one task per shard)."""
    from gpt2ja.tokenization.shards import write_shards

    before = manifest_stamp(out)
    with (
        _parts_on("shards", settings.task_runner, settings.workers) as map_parts,
        artifacts.stage_progress("shards", out),
    ):
        call_stage(
            "shards", write_shards, corpus_uri, tokenizer_uri, out, settings.shards_config(), map_parts=map_parts
        )
    result = outcome("shards", out, before)
    artifacts.shards(out)
    return result


@flow(name="shards", log_prints=True)
def shards_flow(corpus_uri: str, tokenizer_uri: str, out: str, settings: ShardsSection) -> dict:
    """Encode the corpus, pack fixed-length examples and write GZIP TFRecord shards."""
    return shards_task(corpus_uri, tokenizer_uri, out, settings)


# ----------------------------------------------------------------- train


@task(cache_policy=NO_CACHE, task_run_name="train")
def train_task(shards_uri: str, run_uri: str, settings: TrainSection) -> dict:  # type: ignore[valid-type]
    """``gpt2ja.model.train.train``; its progress lines (loss, tokens/s, ETA) go to the run's log.

    While it trains the UI shows its progress artifact and, at each evaluation, its
    loss table and curve so far (:class:`gpt2ja.flows.artifacts.TrainLive`).
    """
    from gpt2ja.model.train import train

    before = manifest_stamp(run_uri)  # train() itself refuses a run that was started on other shards
    live = artifacts.TrainLive(run_uri, settings.steps)
    call_stage(
        "train", train, settings.train_config(shards_uri, run_uri), progress=get_run_logger().info, on_log=live.on_log
    )
    result = outcome("train", run_uri, before)
    live.finish()
    artifacts.train(run_uri)
    return result


def use_backend(name: str | None) -> None:
    """This flow run's Keras backend (``model.backend.use``), chosen before a stage loads Keras (one line if not)."""
    from gpt2ja.model import backend

    try:
        backend.use(name)
    except backend.BackendError as err:
        raise StageError(f"train: {err}") from None


@flow(name="train", log_prints=True)
def train_flow(shards_uri: str, run_uri: str, settings: TrainSection) -> dict:  # type: ignore[valid-type]
    """Train (or resume, or skip when finished) a GPT-2 on the shards; the run directory is ``run_uri``."""
    use_backend(settings.backend)
    return train_task(shards_uri, run_uri, settings)


# ----------------------------------------------------------------- evaluate (with samples)


@task(cache_policy=NO_CACHE, task_run_name="evaluate")
def evaluate_task(
    run_uri: str, texts: list[str], out: str, settings: EvaluateSection, sampling: GenerateSection | None = None
) -> dict:
    from gpt2ja.model.evaluate import write_evaluation

    before = manifest_stamp(out)
    call_stage(
        "evaluate",
        write_evaluation,
        run_uri,
        texts,
        out,
        context=settings.context,
        stride=settings.stride,
        batch_size=settings.batch_size,
        prime_chars=settings.prime_chars,
        prompts=sampling.prompts if sampling else (),
        sampling=sampling.model_dump(exclude={"prompts"}) if sampling else None,
    )
    result = outcome("evaluate", out, before)
    artifacts.evaluation(out)
    return result


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    run_uri: str, texts: list[str], out: str, settings: EvaluateSection, sampling: GenerateSection | None = None
) -> dict:
    """Bits per character and per byte of held-out ``texts``, token perplexity, and samples; written to ``out``."""
    return evaluate_task(run_uri, texts, out, settings, sampling)


# ----------------------------------------------------------------- generate (on demand)


@task(cache_policy=NO_CACHE, task_run_name="generate")
def generate_task(run_uri: str, settings: GenerateSection) -> int:
    from gpt2ja.model.generate import generate_run

    samples = call_stage(
        "generate", generate_run, run_uri, list(settings.prompts), **settings.model_dump(exclude={"prompts"})
    )
    rows = [
        {"prompt": s.prompt, "text": s.text, "stopped": s.stopped, **settings.model_dump(exclude={"prompts"})}
        for s in samples
    ]
    artifacts.markdown(
        artifacts.key("generate", artifacts.name_of(run_uri)),
        artifacts.samples_markdown(run_uri, rows),
        f"samples of {run_uri}",
    )
    for r in rows:
        get_run_logger().info("%s", (r["prompt"] + r["text"]).replace("\n", " ⏎ "))
    return len(rows)


@flow(name="generate", log_prints=True)
def generate_flow(run_uri: str, settings: GenerateSection) -> dict:
    """Sample continuations of the prompts from a run's newest checkpoint (a Markdown artifact; writes no files)."""
    return {"uri": run_uri, "samples": generate_task(run_uri, settings)}


# ----------------------------------------------------------------- export


@task(cache_policy=NO_CACHE, task_run_name="export")
def export_task(run_uri: str, out: str, settings: ExportSection) -> dict:
    from gpt2ja.model.export import export_hf

    before = manifest_stamp(out)
    try:
        call_stage("export", export_hf, run_uri, out)
    except ImportError as err:  # torch / transformers / safetensors are the `export` extra
        raise StageError(f"export: {err.name} is missing; pip install -e '.[export]'") from None
    result = outcome("export", out, before)
    artifacts.export(out, run_uri)
    return result


@flow(name="export", log_prints=True)
def export_flow(run_uri: str, out: str, settings: ExportSection = ExportSection()) -> dict:
    """Export the run's newest checkpoint (Hugging Face GPT2LMHeadModel, logits verified) to ``out``."""
    return export_task(run_uri, out, settings)


# ----------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Stage:
    """One stage as the pipeline, the deployments and the UI see it: its flow and where its parameters come from.

    ``section`` is the pipeline config's section that switches the stage on
    (None: always on); ``parameters(config)`` is what the pipeline passes its
    flow, read when the stage starts (the clean stage's inputs are the crawls
    finished by then). ``in_pipeline`` False: a deployment only (``generate``:
    the pipeline's samples are written by ``evaluate``).
    """

    name: str
    flow: Flow
    section: str | None
    parameters: Callable[[PipelineConfig], dict]
    in_pipeline: bool = True

    def enabled(self, config: PipelineConfig) -> bool:
        return self.in_pipeline and (self.section is None or getattr(config, self.section) is not None)


def crawl_source(entry: CrawlEntry) -> str:
    """The source directory a crawl entry writes under (``{root}/raw/{source}/``)."""
    return "files" if isinstance(entry, FilesCrawl) else entry.source


def finished_crawls(config: PipelineConfig) -> list[str]:
    """Every finished crawl with documents of every configured crawl (corpus-refresh's too)."""
    from gpt2ja.crawler.refresh import corpus_inputs

    return corpus_inputs(config.root, [(crawl_source(e), e.crawl_id) for e in config.crawl])


def _clean_inputs(config: PipelineConfig) -> list[str]:
    """Every finished crawl of the configured sources (corpus-refresh's too), else the configured crawls' outputs."""
    return finished_crawls(config) or [
        e.out_uri(config.root)
        if isinstance(e, FilesCrawl)
        else e.warc_config(config.root).out_uri
        if isinstance(e, WarcCrawl)
        else e.crawl_config(config.root, "http://127.0.0.1").out_uri
        for e in config.crawl
    ]


#: The stages in pipeline order: the one list the pipeline, the deployments and the summary read.
STAGES: tuple[Stage, ...] = (
    Stage("crawl", crawl_flow, None, lambda c: {"root": c.root, "crawl": c.crawl}),
    Stage("clean", clean_flow, None, lambda c: {"inputs": _clean_inputs(c), "out": c.clean_uri, "settings": c.clean}),
    Stage(
        "tokenizer",
        tokenizer_flow,
        None,
        lambda c: {"corpus_uri": c.clean_uri, "out": c.tokenizer_uri, "settings": c.tokenizer},
    ),
    Stage(
        "shards",
        shards_flow,
        None,
        lambda c: {
            "corpus_uri": c.clean_uri,
            "tokenizer_uri": c.tokenizer_uri,
            "out": c.shards_uri,
            "settings": c.shards,
        },
    ),
    Stage(
        "train", train_flow, "train", lambda c: {"shards_uri": c.shards_uri, "run_uri": c.run_uri, "settings": c.train}
    ),
    Stage(
        "evaluate",
        evaluate_flow,
        "evaluate",
        lambda c: {
            "run_uri": c.run_uri,
            "texts": c.eval_texts,
            "out": c.eval_uri,
            "settings": c.evaluate,
            "sampling": c.generate,
        },
    ),
    Stage(
        "generate",
        generate_flow,
        "generate",
        lambda c: {"run_uri": c.run_uri, "settings": c.generate},
        in_pipeline=False,
    ),
    Stage("export", export_flow, "export", lambda c: {"run_uri": c.run_uri, "out": c.export_uri, "settings": c.export}),
)

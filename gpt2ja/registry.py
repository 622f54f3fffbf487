"""Every stage command in one list: its command-line path, config model, YAML section, flags and runner.

The ``gpt2ja`` commands of the stages are generated from :data:`COMMANDS` (:mod:`gpt2ja.cli`): each
command's options are the :class:`Flag` fields of its model, typed and described by the model (the
description is the help, the model's default is shown), plus ``--config FILE`` (the YAML section
named by ``section``) and ``--set key=value`` for any field without a flag. Settings layer as
config section < ``--set`` < flags, and the model decides every default (a flag's own default is
None). Adding a stage is its package file (config model and function) plus one :class:`Command` here.

The runners import what they call (Scrapy, TensorFlow, torch) when they run, so importing this
module (and ``gpt2ja --help``) loads only pydantic models. Stage packages never import this module;
the command line and the flows do.

Example::

    Command(
        ("shards",),
        ShardsJob,
        "shards",
        "Encode a clean corpus and pack it into GZIP TFRecord shards (train and validation).",
        _shards,
        flags=(Flag("corpus", "--corpus"), Flag("tokenizer", "--tokenizer"), Flag("seq_len", "--seq-len"),
               Flag("out", "--out"), Flag("workers")),
    )
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from gpt2ja.corpus.clean import CleanConfig
from gpt2ja.corpus.parquet import ParquetConfig
from gpt2ja.crawler.files import FilesConfig
from gpt2ja.crawler.runner import CrawlConfig
from gpt2ja.crawler.warc import WarcConfig
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.model.evaluate import EvaluateConfig
from gpt2ja.model.export import ExportConfig
from gpt2ja.model.generate import GenerateConfig
from gpt2ja.model.train import TrainConfig
from gpt2ja.tokenization.shards import ShardsJob
from gpt2ja.tokenization.train import TokenizerConfig


class CommandError(Gpt2jaError):
    """A stage command that cannot run as asked (one line)."""


@dataclass(frozen=True)
class Flag:
    """One model field that is a command-line flag.

    ``decls`` are its option names (default ``--field-name``; ``"--xla/--no-xla"`` for an on/off pair);
    ``argument``: a positional argument instead (a list field takes any number); ``kind``: the type the
    command line reads when it is not the field's (``str`` for a comma-separated list), with ``convert``
    turning the value read into the field's; ``help``: when the field's description does not serve;
    ``required``: the command line must give it (or ``--config``/``--set``) although the model has a default.
    """

    field: str
    decls: tuple[str, ...] | str = ()
    argument: bool = False
    kind: Any = None
    convert: Callable[[Any], Any] | None = None
    help: str | None = None
    required: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        if isinstance(self.decls, str):
            return (self.decls,)
        return self.decls or ("--" + self.field.replace("_", "-"),)


@dataclass(frozen=True)
class Command:
    """One stage command: ``gpt2ja {path}`` builds ``model`` from the ``section`` of ``--config``, ``--set``
    and ``flags`` (with ``fixed`` values no one sets, e.g. the spider of ``crawl aozora``), then calls
    ``run(config)``, which runs the stage and prints its summary."""

    path: tuple[str, ...]
    model: type[BaseModel]
    section: str
    help: str
    run: Callable[[Any], None]
    flags: tuple[Flag, ...] = ()
    fixed: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return " ".join(self.path)


# ----------------------------------------------------------------- runners: run the stage, print its summary


def print_crawl_summary(out_uri: str) -> None:
    """The documents, characters, WARC records and drops of a finished crawl, from its manifest."""
    from gpt2ja.infra import storage

    manifest = storage.read_manifest(out_uri)
    if manifest is None:
        raise CommandError(f"{out_uri}: no manifest yet (crawl interrupted?): rerun the same command to resume")
    c = manifest["counts"]
    print(f"{c.get('documents', 0)} documents, {c.get('characters', 0):,} characters → {out_uri}")
    if c.get("warc"):
        records = c["warc"].get("records", {})
        print(
            f"warc: {records.get('response', 0)} responses in {c['warc'].get('files', 0)} file(s) → "
            f"{out_uri.rstrip('/')}/warc/"
        )
    if c.get("drops"):
        print("dropped: " + ", ".join(f"{k} {v}" for k, v in c["drops"].items()))


def _crawl(cfg: CrawlConfig) -> None:
    from gpt2ja.crawler.runner import run_crawl

    print_crawl_summary(run_crawl(cfg))


def _files(cfg: FilesConfig) -> None:
    from gpt2ja.crawler.files import run_files

    print_crawl_summary(run_files(cfg))


def _warc(cfg: WarcConfig) -> None:
    from gpt2ja.crawler.warc import crawl_warc

    print_crawl_summary(crawl_warc(cfg))


def _clean(cfg: CleanConfig) -> None:
    from gpt2ja.corpus.clean import run_clean
    from gpt2ja.infra import storage

    run_clean(cfg)
    out = cfg.out
    manifest = storage.read_manifest(out)
    c = manifest["counts"]
    print(
        f"{c['documents_in']:,} documents in → {c['documents_out']:,} out "
        f"(train {c['splits']['train']['documents']:,}, validation {c['splits']['validation']['documents']:,}); "
        f"{c['characters_out']:,} characters → {out}"
    )
    if c["drops"]:
        print("dropped: " + ", ".join(f"{k} {v}" for k, v in c["drops"].items()))
    index = manifest.get("dedup_index")
    if index:  # an indexed clean (dedup.index): what it read and deduplicated against
        print(
            f"dedup index {index['against'] or '(none)'} → {index['produced']}: {index['documents_read']:,} "
            f"documents read from {len(index['inputs_read'])} new crawl(s)"
        )
    print(f"report: {storage.join(out, 'report.md')}")


def _tokenizer(cfg: TokenizerConfig) -> None:
    from gpt2ja.tokenization.tokenizer import Tokenizer
    from gpt2ja.tokenization.train import run_tokenizer, summary

    uri, skipped = run_tokenizer(cfg)
    print(summary(Tokenizer.load(uri), uri, skipped=skipped))


def _shards(job: ShardsJob) -> None:
    from gpt2ja.infra import storage
    from gpt2ja.tokenization.shards import run_shards, summary

    uri, did = run_shards(job)
    print(summary(storage.read_manifest(uri), did))


def _train(cfg: TrainConfig) -> None:
    from gpt2ja.model.train import train

    print(f"run: {train(cfg)}")


def _use_backend(name: str | None) -> None:
    """The Keras backend, chosen before any model code imports Keras."""
    from gpt2ja.model import backend

    backend.use(name)


#: the baseline figures ``gpt2ja eval`` prints (eval.json has them all)
EVAL_BASELINES = (
    "ppmd_order8_bits_per_character",
    "ppmd_order8_bits_per_byte",
    "ppmd_order8_primed_bits_per_character",
    "ppmd_order8_primed_bits_per_byte",
    "prime_characters",
    "prime_source",
    "gzip_bits_per_character",
    "gzip_bits_per_byte",
    "xz_bits_per_character",
    "xz_bits_per_byte",
)


def _evaluate(cfg: EvaluateConfig) -> None:
    import json

    _use_backend(cfg.backend)
    from gpt2ja.model.baselines import verdict
    from gpt2ja.model.evaluate import evaluate_run

    result = evaluate_run(
        cfg.run,
        cfg.texts,
        context=cfg.context,
        stride=cfg.stride,
        batch_size=cfg.batch_size,
        prime_chars=cfg.prime_chars,
    )
    keys = ("bits_per_character", "bits_per_byte", "token_perplexity", "characters", "bytes", "tokens")
    shown = {k: result[k] for k in keys if k in result}
    b = result["baselines"]
    shown["baselines"] = {k: b[k] for k in EVAL_BASELINES}
    print(json.dumps(shown, ensure_ascii=False, indent=2))
    print("\n".join(verdict(result["bits_per_character"], b)))


def _generate(cfg: GenerateConfig) -> None:
    _use_backend(cfg.backend)
    from gpt2ja.model.generate import generate_run

    for sample in generate_run(cfg.run, cfg.prompts, **cfg.sampling()):
        print(f"--- prompt {sample.prompt!r} (stopped: {sample.stopped})")
        print(sample.prompt + sample.text)


def _export_hf(cfg: ExportConfig) -> None:
    _use_backend(cfg.backend)
    try:
        from gpt2ja.model.export import export_hf, push_to_hub

        uri = export_hf(cfg.run, cfg.out)
        print(f"exported {cfg.run} → {uri} (logits checked against transformers' GPT2LMHeadModel)")
        if cfg.push_to_hub:
            print(f"pushed {uri} → {push_to_hub(uri, cfg.push_to_hub, private=cfg.private)}")
    except ImportError as exc:  # torch / transformers / safetensors / huggingface_hub are the `export` extra
        raise CommandError(
            f"the export needs torch and transformers ({exc.name} is missing): pip install -e '.[export]'"
        ) from None


def _export_parquet(cfg: ParquetConfig) -> None:
    from gpt2ja.corpus.parquet import export_parquet, summary
    from gpt2ja.infra import storage

    uri, did = export_parquet(cfg)
    print(summary(storage.read_manifest(uri), did))


def _comma_list(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


# ----------------------------------------------------------------- the commands

ROOT = Flag("root", help="Run root: a local directory or gs://bucket/prefix.")
CRAWL_ID = Flag("crawl_id", help="Output name; default today's UTC date. The same id resumes an interrupted crawl.")
WORKERS = Flag("workers", help="Processes (default: all cores).")
BACKEND = Flag("backend")
SPIDER_FLAGS = (
    ROOT,
    CRAWL_ID,
    Flag("polite", "--polite/--no-polite", help="--no-polite only for a local mirror (default polite)."),
    Flag("max_pages"),
    Flag("depth_limit"),
    Flag("progress_interval"),
    Flag("contact"),
    Flag("warc", "--warc/--no-warc"),
)

#: The stage commands in pipeline order: the one list the command line (and its tests) read.
COMMANDS: tuple[Command, ...] = (
    Command(
        ("crawl", "aozora"),
        CrawlConfig,
        "crawl",
        "Crawl Aozora Bunko: author pages → card pages → text zips and XHTML editions.",
        _crawl,
        flags=(
            Flag(
                "start_urls",
                "--start-url",
                required=True,
                help="An author page (…/index_pages/personN.html) or a card page; repeat for several.",
            ),
            Flag(
                "editions",
                kind=str,
                convert=_comma_list,
                help="Editions to fetch, preferred first, comma-separated: txt (the zip), xhtml.",
            ),
            *SPIDER_FLAGS,
        ),
        fixed={"source": "aozora"},
    ),
    Command(
        ("crawl", "web"),
        CrawlConfig,
        "crawl",
        "Crawl web pages from seeds or sitemaps, keeping the main text of Japanese pages.",
        _crawl,
        flags=(
            Flag("start_urls", "--seed", help="A seed page; links are followed on the same site."),
            Flag("sitemaps", "--sitemap", help="A sitemap.xml (or robots.txt listing sitemaps)."),
            Flag("min_kana_ratio"),
            *SPIDER_FLAGS,
        ),
        fixed={"source": "web"},
    ),
    Command(
        ("crawl", "files"),
        FilesConfig,
        "crawl",
        "Turn your own text files into raw Documents.",
        _files,
        flags=(Flag("directory", argument=True), ROOT, CRAWL_ID, Flag("part_docs")),
    ),
    Command(
        ("crawl", "warc"),
        WarcConfig,
        "crawl",
        "Read web archives: HTML responses (WARC) and text conversions (WET) → Japanese main text.",
        _warc,
        flags=(
            Flag(
                "paths",
                argument=True,
                help="WARC or WET files (.warc.gz, .warc, .wet.gz, .wet), folders of them, gs:// objects and "
                "prefixes, http(s):// file URLs, or path listings such as Common Crawl's https://data.commoncrawl.org/"
                "crawl-data/CC-MAIN-2024-10/wet.paths.gz (s3:// is refused: use the https:// mirror).",
            ),
            ROOT,
            CRAWL_ID,
            Flag("workers", help="Files read in parallel, one process each (default: all cores)."),
            Flag("min_kana_ratio"),
            Flag("limit", "--first"),
            Flag("offset"),
            Flag("paths_base"),
        ),
    ),
    Command(
        ("clean",),
        CleanConfig,
        "clean",
        "Clean raw crawls: Aozora notation, NFKC, Japanese quality filters, dedup, train/validation split.",
        _clean,
        flags=(
            Flag(
                "inputs",
                "--in",
                help="A raw crawl directory ({root}/raw/{source}/{crawl_id}); repeat for several crawls and sources.",
            ),
            Flag("out", help="The clean corpus directory, e.g. data/clean/aozora."),
            Flag("workers", help="Processes for the per-shard phases (default: all cores)."),
        ),
    ),
    Command(
        ("tokenizer", "train"),
        TokenizerConfig,
        "tokenizer",
        "Train a tokenizer on a clean corpus; report characters per token on its validation split.",
        _tokenizer,
        flags=(
            Flag("corpus"),
            Flag("kind"),
            Flag("vocab_size"),
            Flag("out"),
            Flag("model_type"),
            Flag("sample_sentences"),
        ),
    ),
    Command(
        ("shards",),
        ShardsJob,
        "shards",
        "Encode a clean corpus and pack it into GZIP TFRecord shards (train and validation).",
        _shards,
        flags=(Flag("corpus"), Flag("tokenizer"), Flag("seq_len"), Flag("out"), WORKERS),
    ),
    Command(
        ("train",),
        TrainConfig,
        "train",
        "Train (or resume) a GPT-2 on TFRecord shards; checkpoints, metrics.jsonl and TensorBoard in the run.",
        _train,
        flags=(
            Flag("data", help="A shards directory (gpt2ja shards)."),
            Flag("run", help="The run directory, local or gs://; an existing run resumes."),
            Flag("preset"),
            Flag("steps"),
            Flag("stop_at"),
            Flag("init_from"),
            Flag("batch_tokens"),
            Flag("micro_batch"),
            Flag("learning_rate"),
            Flag("warmup_steps"),
            Flag("backend"),
            Flag("strategy"),
            Flag("mixed_precision"),
            Flag("jit_compile", "--xla/--no-xla", help="Compile the step with XLA."),
            Flag("override", "--override"),
        ),
    ),
    Command(
        ("eval",),
        EvaluateConfig,
        "evaluate",
        "Bits per character and per UTF-8 byte on raw text (the figures that compare vocabularies), beside the "
        "same text's compression baselines (PPMd order 8 alone and primed with training text, gzip, xz); "
        "writes eval.json.",
        _evaluate,
        flags=(
            Flag("run"),
            Flag("texts", "--text"),
            Flag("context"),
            Flag("stride"),
            Flag("batch_size"),
            Flag("prime_chars"),
            BACKEND,
        ),
    ),
    Command(
        ("generate",),
        GenerateConfig,
        "generate",
        "Sample continuations: temperature, then top-k, then top-p (as Hugging Face's warpers); stops at EOS.",
        _generate,
        flags=(
            Flag("run"),
            Flag("prompts", "--prompt", help="A prompt (repeat for several; empty: unconditional)."),
            Flag("top_k"),
            Flag("top_p"),
            Flag("temperature"),
            Flag("greedy"),
            Flag("max_chars"),
            Flag("num"),
            Flag("seed"),
            BACKEND,
        ),
    ),
    Command(
        ("export", "hf"),
        ExportConfig,
        "export",
        "Export a run as a Hugging Face GPT2LMHeadModel (config.json, model.safetensors, tokenizer, model card), "
        "verified by logits; optionally push it to the Hub.",
        _export_hf,
        flags=(Flag("run"), Flag("out"), Flag("push_to_hub"), Flag("private", "--private"), BACKEND),
    ),
    Command(
        ("export", "parquet"),
        ParquetConfig,
        "parquet",
        "Export a clean corpus as Parquet: one file per part; columns id, source, url, title, author, text, "
        "license, fetched_at, split, meta (JSON text).",
        _export_parquet,
        flags=(
            Flag("corpus", help="A clean corpus directory (local or gs://)."),
            Flag("out"),
            Flag("compression"),
            Flag("row_group_docs"),
        ),
    ),
)


def command(path: tuple[str, ...] | str) -> Command:
    """The command at ``path`` (``("export", "hf")`` or ``"export hf"``)."""
    path = tuple(path.split()) if isinstance(path, str) else path
    for c in COMMANDS:
        if c.path == path:
            return c
    raise KeyError(" ".join(path))

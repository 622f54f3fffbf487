"""The ``gpt2ja`` command line.

Every command is a thin layer over a package function; heavy libraries
(Scrapy, TensorFlow, MeCab) are imported inside the command that needs them,
so ``gpt2ja --help`` is instant. A bad argument gets one line that names it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from gpt2ja.crawler.runner import WEB_MAX_PAGES, CrawlConfig  # pydantic only: no Scrapy until a crawl starts
from gpt2ja.model.baselines import DEFAULT_PRIME_CHARS  # no TensorFlow, no pyppmd until an evaluation runs
from gpt2ja.model.generate import DEFAULT_SAMPLING as SAMPLING  # no TensorFlow: it is imported when sampling starts

# `gpt2ja --help` lists the commands in the order a pipeline runs them, then the tools around it
COMMAND_ORDER = (
    "crawl",
    "clean",
    "tokenizer",
    "shards",
    "train",
    "eval",
    "generate",
    "score",
    "export",
    "run",
    "demo",
    "serve",
    "serve-mirror",
    "study",
    "show",
    "extract",
)


class PipelineOrder(TyperGroup):
    """A command group that lists its commands in :data:`COMMAND_ORDER` (click sorts them by name)."""

    def list_commands(self, ctx) -> list[str]:
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: (rank.get(name, len(rank)), name))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"gpt2ja {version('gpt2ja')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("gpt2ja (not installed: pip install -e .)")
        raise typer.Exit()


app = typer.Typer(
    name="gpt2ja",
    cls=PipelineOrder,
    help="Train Japanese GPT-2 models end to end: crawl → clean → tokenizer → TFRecord shards → "
    "train → evaluate / generate / export. Every stage reads and writes artifacts under a run root "
    "(a local directory or gs://bucket/prefix).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", is_eager=True, callback=_version, help="Print the version and exit."
    ),
) -> None:
    """The group's own options (its help text is the Typer's)."""


crawl_app = typer.Typer(
    help="Collect raw Japanese text into {root}/raw/{source}/{crawl_id}/.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(crawl_app, name="crawl")
tokenizer_app = typer.Typer(
    help="Train and inspect tokenizers ({root}/tokenizers/{name}/).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(tokenizer_app, name="tokenizer")
from gpt2ja.studies.cli import app as study_app  # noqa: E402 - `gpt2ja study vocab|sampling` (studies/)

app.add_typer(study_app, name="study")

ROOT = typer.Option("data", "--root", help="Run root: a local directory or gs://bucket/prefix.")
SET = typer.Option(
    None,
    "--set",
    help="Any setting without a flag, as key=value (dotted for nested ones, "
    "e.g. split.validation_fraction=0.1); repeat for several.",
)


CRAWL_ID = typer.Option(
    None, "--crawl-id", help="Output name; default today's UTC date. The same id resumes an interrupted crawl."
)


def _crawl_default(name: str):
    """A crawl setting's default, from its one home (CrawlConfig), for the help texts."""
    return CrawlConfig.model_fields[name].get_default(call_default_factory=True)


# Crawl options: None means "the config model's default" (each default lives in its model only).
POLITE = typer.Option(None, "--polite/--no-polite", help="--no-polite only for a local mirror (default polite).")
DEPTH_LIMIT = typer.Option(
    None, help=f"Links deep from a start page (default {_crawl_default('depth_limit')}; 0: no limit)."
)
PROGRESS = typer.Option(
    None, help=f"Seconds between progress lines (default {_crawl_default('progress_interval')}; 0: off)."
)
CONTACT = typer.Option(None, help="Contact added to the User-Agent.")
WARC = typer.Option(
    None,
    "--warc/--no-warc",
    help="Store the raw responses as WARC files in warc/ beside the documents (default: on for web, off for aozora).",
)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _crawl(sets: list[str] | None, **kwargs) -> None:
    from gpt2ja.crawler.runner import run_crawl

    cfg = _settings(CrawlConfig, "crawl", None, sets, kwargs)
    out = run_crawl(cfg)
    _print_summary(out)


def _print_summary(out_uri: str) -> None:
    from gpt2ja.infra import storage

    manifest = storage.read_manifest(out_uri)
    if manifest is None:
        print(f"{out_uri}: no manifest yet (crawl interrupted?): rerun the same command to resume", file=sys.stderr)
        raise typer.Exit(1)
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


@crawl_app.command("aozora")
def crawl_aozora(
    start_url: list[str] = typer.Option(
        ..., "--start-url", help="An author page (…/index_pages/personN.html) or a card page; repeat for several."
    ),
    root: str = ROOT,
    crawl_id: Optional[str] = CRAWL_ID,
    editions: Optional[str] = typer.Option(
        None,
        help="Editions to fetch, preferred first: txt (the zip), xhtml "
        f"(default {','.join(_crawl_default('editions'))}).",
    ),
    polite: Optional[bool] = POLITE,
    max_pages: Optional[int] = typer.Option(None, help="Stop after this many responses (default 0: no limit)."),
    depth_limit: Optional[int] = DEPTH_LIMIT,
    progress_interval: Optional[float] = PROGRESS,
    contact: Optional[str] = CONTACT,
    warc: Optional[bool] = WARC,
    sets: Optional[list[str]] = SET,
) -> None:
    """Crawl Aozora Bunko: author pages → card pages → text zips and XHTML editions."""
    _crawl(
        sets,
        source="aozora",
        start_urls=start_url,
        root=root,
        crawl_id=crawl_id,
        editions=[e.strip() for e in editions.split(",") if e.strip()] if editions else None,
        polite=polite,
        max_pages=max_pages,
        depth_limit=depth_limit,
        progress_interval=progress_interval,
        contact=contact,
        warc=warc,
    )


@crawl_app.command("web")
def crawl_web(
    seed: list[str] = typer.Option([], "--seed", help="A seed page; links are followed on the same site."),
    sitemap: list[str] = typer.Option([], "--sitemap", help="A sitemap.xml (or robots.txt listing sitemaps)."),
    root: str = ROOT,
    crawl_id: Optional[str] = CRAWL_ID,
    polite: Optional[bool] = POLITE,
    max_pages: Optional[int] = typer.Option(
        None, help=f"Stop after this many responses (default {WEB_MAX_PAGES}; 0: no limit)."
    ),
    depth_limit: Optional[int] = DEPTH_LIMIT,
    min_kana_ratio: Optional[float] = typer.Option(
        None,
        help="Pages with a smaller hiragana+katakana share are not "
        f"Japanese (default {_crawl_default('min_kana_ratio')}).",
    ),
    progress_interval: Optional[float] = PROGRESS,
    contact: Optional[str] = CONTACT,
    warc: Optional[bool] = WARC,
    sets: Optional[list[str]] = SET,
) -> None:
    """Crawl web pages from seeds or sitemaps, keeping the main text of Japanese pages."""
    _crawl(
        sets,
        source="web",
        start_urls=seed,
        sitemaps=sitemap,
        root=root,
        crawl_id=crawl_id,
        polite=polite,
        max_pages=max_pages,
        depth_limit=depth_limit,
        min_kana_ratio=min_kana_ratio,
        progress_interval=progress_interval,
        contact=contact,
        warc=warc,
    )


@crawl_app.command("files")
def crawl_files(
    directory: Path = typer.Argument(..., help="A folder of .txt / .zip / .jsonl(.gz) files (searched recursively)."),
    root: str = ROOT,
    crawl_id: Optional[str] = CRAWL_ID,
) -> None:
    """Turn your own text files into raw Documents."""
    from gpt2ja.crawler.files import crawl_files as run

    out = run(str(directory), root=root, crawl_id=crawl_id)
    _print_summary(out)


@crawl_app.command("warc")
def crawl_warc(
    paths: list[str] = typer.Argument(
        ...,
        help="WARC or WET files (.warc.gz, .warc, .wet.gz, .wet), folders of "
        "them, gs:// objects and prefixes, http(s):// file URLs, or path "
        "listings such as Common Crawl's https://data.commoncrawl.org/"
        "crawl-data/CC-MAIN-2024-10/wet.paths.gz (s3:// is refused: use "
        "the https:// mirror).",
    ),
    root: str = ROOT,
    crawl_id: Optional[str] = CRAWL_ID,
    workers: Optional[int] = typer.Option(None, help="Files read in parallel, one process each (default: all cores)."),
    min_kana_ratio: Optional[float] = typer.Option(
        None,
        help="Pages with a smaller hiragana+katakana share are not "
        f"Japanese (default {_crawl_default('min_kana_ratio')}).",
    ),
    limit: Optional[int] = typer.Option(
        None,
        "--first",
        help="Read only the first N entries of each path listing (after --offset); a snapshot lists ~90,000 files.",
    ),
    offset: Optional[int] = typer.Option(None, "--offset", help="Skip the first N entries of each path listing."),
    paths_base: Optional[str] = typer.Option(
        None,
        "--paths-base",
        help="What a listing's relative paths are joined to (default https://data.commoncrawl.org/).",
    ),
    sets: Optional[list[str]] = SET,
) -> None:
    """Read web archives: HTML responses (WARC) and text conversions (WET) → Japanese main text."""
    from gpt2ja.crawler.warc import WarcConfig
    from gpt2ja.crawler.warc import crawl_warc as run

    out = run(
        _settings(
            WarcConfig,
            "crawl",
            None,
            sets,
            {
                "paths": paths,
                "root": root,
                "crawl_id": crawl_id,
                "workers": workers,
                "min_kana_ratio": min_kana_ratio,
                "limit": limit,
                "offset": offset,
                "paths_base": paths_base,
            },
        )
    )
    _print_summary(out)


@app.command()
def clean(
    inputs: list[str] = typer.Option(
        ...,
        "--in",
        help="A raw crawl directory ({root}/raw/{source}/{crawl_id}); repeat for several crawls and sources.",
    ),
    out: str = typer.Option(..., "--out", help="The clean corpus directory, e.g. data/clean/aozora."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML with a `clean:` section (presets, dedup, split); see configs/clean.yaml."
    ),
    workers: Optional[int] = typer.Option(None, help="Processes for the per-shard phases (default: all cores)."),
    sets: Optional[list[str]] = SET,
) -> None:
    """Clean raw crawls: Aozora notation, NFKC, Japanese quality filters, dedup, train/validation split."""
    from gpt2ja.corpus.clean import CleanConfig, run_clean

    run_clean(_settings(CleanConfig, "clean", config, sets, {"inputs": inputs, "out": out, "workers": workers}))
    from gpt2ja.infra import storage

    c = storage.read_manifest(out)["counts"]
    print(
        f"{c['documents_in']:,} documents in → {c['documents_out']:,} out "
        f"(train {c['splits']['train']['documents']:,}, validation {c['splits']['validation']['documents']:,}); "
        f"{c['characters_out']:,} characters → {out}"
    )
    if c["drops"]:
        print("dropped: " + ", ".join(f"{k} {v}" for k, v in c["drops"].items()))
    index = storage.read_manifest(out).get("dedup_index")
    if index:  # an indexed clean (dedup.index): what it read and deduplicated against
        print(
            f"dedup index {index['against'] or '(none)'} → {index['produced']}: {index['documents_read']:,} "
            f"documents read from {len(index['inputs_read'])} new crawl(s)"
        )
    print(f"report: {storage.join(out, 'report.md')}")


def _settings(model, section: str, config: Optional[Path], sets: list[str], given: dict):
    """The stage's config model from (in rising priority) its ``--config`` section, ``--set`` items and flags.

    Every default lives in the model; unknown sections and settings are errors.
    """
    from gpt2ja.flows.config import ConfigError, PipelineConfig
    from gpt2ja.infra import yamlconfig

    where = str(config) if config else "the command line"
    data = (
        yamlconfig.read_section(
            config, section, ConfigError, example="configs/demo.yaml", allowed=PipelineConfig.model_fields
        )
        if config
        else {}
    )
    data = yamlconfig.apply_overrides(data, sets or [], ConfigError)
    data.update({k: v for k, v in given.items() if v is not None})
    return yamlconfig.validate(
        model, data, where, ConfigError, expected=f"the {section} settings", label=f"{section} settings from"
    )


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: str = typer.Option(..., "--corpus", help="A clean corpus directory (its train split is used)."),
    kind: str = typer.Option("sentencepiece", "--kind", help="bytes, sentencepiece or mecab+sentencepiece."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="1,000 to 64,000 (bytes: 257)."),
    out: str = typer.Option(..., "--out", help="Where the tokenizer goes, e.g. data/tokenizers/sp16k."),
    model_type: str = typer.Option("unigram", "--model-type", help="sentencepiece kinds: unigram or bpe."),
    sample_sentences: Optional[int] = typer.Option(
        None,
        "--sample-sentences",
        help="Train on a seeded uniform sample of this many sentences (default "
        "1,000,000; sentencepiece's time grows with it: 200,000 serves 8k–16k).",
    ),
) -> None:
    """Train a tokenizer on a clean corpus; report characters per token on its validation split."""
    from gpt2ja.tokenization.train import cli_train

    if kind != "bytes" and vocab_size is None:
        _fail("--vocab-size is required for sentencepiece kinds (e.g. --vocab-size 16000)")
    cli_train(
        corpus,
        kind,
        vocab_size if vocab_size is not None else 257,
        out,
        model_type=model_type,
        **({"sample_sentences": sample_sentences} if sample_sentences is not None else {}),
    )


@tokenizer_app.command("encode")
def tokenizer_encode(
    tokenizer: str = typer.Argument(..., help="A tokenizer directory."),
    text: str = typer.Argument(..., help="The text to encode."),
) -> None:
    """Show how a tokenizer splits a text: ids and pieces."""
    from gpt2ja.tokenization.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer)
    ids = tok.encode(text)
    print(" ".join(str(i) for i in ids))
    # Byte-fallback tokens are parts of one character: show each character once, with its token count.
    pieces, pending = [], []
    for i in ids:
        pending.append(i)
        piece = tok.decode(pending)
        if "\ufffd" not in piece or len(pending) == 4:
            pieces.append(piece if len(pending) == 1 else f"{piece}({len(pending)} bytes)")
            pending = []
    print(" | ".join(p.replace("\n", "\\n") or "∅" for p in pieces))
    print(f"{len(text)} characters, {len(ids)} tokens, {len(text) / max(1, len(ids)):.2f} characters per token")


@app.command()
def shards(
    corpus: str = typer.Option(..., "--corpus", help="A clean corpus directory."),
    tokenizer: str = typer.Option(..., "--tokenizer", help="A tokenizer directory."),
    seq_len: int = typer.Option(..., "--seq-len", help="Context length: examples hold seq_len + 1 ids."),
    out: str = typer.Option(..., "--out", help="Where the TFRecords go, e.g. data/datasets/ja/sp16k-1024."),
    workers: Optional[int] = typer.Option(None, help="Encoding processes (default: all cores)."),
) -> None:
    """Encode a clean corpus and pack it into GZIP TFRecord shards (train and validation)."""
    from pydantic import ValidationError

    from gpt2ja.tokenization.shards import cli_shards

    try:
        cli_shards(corpus, tokenizer, seq_len, out, workers=workers)
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}")


@app.command()
def train(
    data: str = typer.Option(..., "--data", help="A shards directory (gpt2ja shards)."),
    run: str = typer.Option(..., "--run", help="The run directory, local or gs://; an existing run resumes."),
    preset: Optional[str] = typer.Option(None, help="tiny, micro, mini, small (117M), medium, large or xl."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps in total."),
    stop_at: Optional[int] = typer.Option(
        None,
        "--stop-at",
        help="Pause after this step (checkpointed); the same "
        "command without it continues. The schedule stays that of --steps.",
    ),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Fine-tune from this run's weights."),
    batch_tokens: Optional[int] = typer.Option(None, help="Global batch in tokens (gradient accumulation reaches it)."),
    micro_batch: Optional[int] = typer.Option(None, help="Sequences per forward/backward pass."),
    learning_rate: Optional[float] = typer.Option(None, help="Peak learning rate."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warmup steps."),
    backend: Optional[str] = typer.Option(
        None,
        help="tensorflow (default) or jax (GPUs, TPUs; no TensorFlow "
        "needed): the same model, data order and checkpoints.",
    ),
    strategy: Optional[str] = typer.Option(
        None, help="TensorFlow's strategy: default, mirrored, multi_worker (TF_CONFIG) or tpu."
    ),
    mixed_precision: Optional[str] = typer.Option(None, help="off, bf16 or fp16 (accelerators)."),
    jit_compile: Optional[bool] = typer.Option(None, "--xla/--no-xla", help="Compile the step with XLA."),
    override: Optional[bool] = typer.Option(
        None,
        "--override",
        help="Resume although the learning rate, batch "
        "or other optimisation settings changed (recorded in hparams.json).",
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML with a `train:` section (any TrainConfig field)."
    ),
    sets: Optional[list[str]] = SET,
) -> None:
    """Train (or resume) a GPT-2 on TFRecord shards; checkpoints, metrics.jsonl and TensorBoard in the run."""
    from gpt2ja.model.train import TrainConfig
    from gpt2ja.model.train import train as run_train

    given = {
        "data": data,
        "run": run,
        "preset": preset,
        "steps": steps,
        "stop_at": stop_at,
        "init_from": init_from,
        "batch_tokens": batch_tokens,
        "micro_batch": micro_batch,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "backend": backend,
        "strategy": strategy,
        "mixed_precision": mixed_precision,
        "jit_compile": jit_compile,
        "override": override,
    }
    cfg = _settings(TrainConfig, "train", config, sets, given)
    uri = run_train(cfg)
    print(f"run: {uri}")


@app.command("convert-checkpoints")
def convert_checkpoints(
    run: str = typer.Option(..., "--run", help="A local run directory with TensorFlow checkpoints (ckpt-N.index)."),
) -> None:
    """Write the newest tf.train.Checkpoint of a run made by an older gpt2ja in the format both backends read
    (checkpoints/ckpt-N.npz and its index); the TensorFlow files stay beside it."""
    from gpt2ja.model import backend, checkpoint, runs

    backend.use("tensorflow")  # the old files are read by TensorFlow itself
    from gpt2ja.infra import storage
    from gpt2ja.model.train import TrainConfig

    if storage.is_gcs(run):
        _fail(f"{run}: convert a local copy of the run (gsutil -m cp -r), then copy it back")
    hparams = runs.read_hparams(run)
    model_cfg = runs.model_config(hparams, run_uri=f"run {run}")
    train_cfg = None
    if hparams.get("train"):
        train_cfg = TrainConfig.model_validate({**hparams["train"], "backend": "tensorflow"})
    seq_len = (hparams.get("data") or {}).get("seq_len")
    per_step = train_cfg.batch_tokens // seq_len if train_cfg and seq_len else None
    checkpoint.convert_tf_run(run, model_cfg, train_cfg, examples_per_step=per_step)


@app.command("eval")
def evaluate(
    run: str = typer.Option(..., "--run", help="A run directory."),
    text: list[str] = typer.Option(..., "--text", help="Held-out text: .txt files or a clean corpus split folder."),
    stride: Optional[int] = typer.Option(None, help="Sliding-window stride in tokens (default: half the context)."),
    prime_chars: int = typer.Option(
        DEFAULT_PRIME_CHARS,
        "--prime-chars",
        min=0,
        help="Characters of the run's training text that prime the PPMd baseline (0: no primed figure).",
    ),
    backend: Optional[str] = typer.Option(
        None, help="tensorflow or jax (default: KERAS_BACKEND, else tensorflow where it is installed, else jax)."
    ),
) -> None:
    """Bits per character and per UTF-8 byte on raw text (the figures that compare vocabularies), beside the same
    text's compression baselines (PPMd order 8 alone and primed with training text, gzip, xz); writes eval.json."""
    from gpt2ja.model import backend as backends

    backends.use(backend)  # before any model code imports Keras
    from gpt2ja.model.baselines import verdict
    from gpt2ja.model.evaluate import evaluate_run

    result = evaluate_run(run, text, stride=stride, prime_chars=prime_chars)
    keys = ("bits_per_character", "bits_per_byte", "token_perplexity", "characters", "bytes", "tokens")
    shown = {k: result[k] for k in keys if k in result}
    b = result["baselines"]
    shown["baselines"] = {
        k: b[k]
        for k in (
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
    }
    print(json.dumps(shown, ensure_ascii=False, indent=2))
    print("\n".join(verdict(result["bits_per_character"], b)))


@app.command()
def score(
    text: str = typer.Argument(..., help="The text to score."),
    run: str = typer.Option(..., "--run", help="A run directory."),
) -> None:
    """Per-token log-probabilities of a text and their total."""
    from gpt2ja.model import backend, runs

    backend.use(None)  # before any model code imports Keras
    from gpt2ja.model.evaluate import score as score_text

    loaded = runs.load_run(run)
    got = score_text(loaded.model, loaded.tokenizer, text)
    for piece, logprob in got.tokens:
        print(f"{logprob:9.3f}  {piece!r}")
    print(f"total {got.total:.3f} nats = {got.bits:.2f} bits; {got.bits / max(1, len(text)):.3f} bits per character")


@app.command()
def generate(
    run: str = typer.Option(..., "--run", help="A run directory."),
    prompt: list[str] = typer.Option([""], "--prompt", help="A prompt (repeat for several; empty: unconditional)."),
    top_k: int = typer.Option(
        SAMPLING["top_k"],
        "--top-k",
        help="Keep the k most likely tokens (0: off; default: the sampling study's choice).",
    ),
    top_p: float = typer.Option(
        SAMPLING["top_p"],
        "--top-p",
        help="Keep the smallest set whose probability reaches p (1: off; default: the sampling study's choice).",
    ),
    temperature: float = typer.Option(
        SAMPLING["temperature"], help="Divide the logits by this first (default: the sampling study's choice)."
    ),
    greedy: bool = typer.Option(False, help="Always take the most likely token."),
    max_chars: int = typer.Option(200, "--max-chars", help="Stop after this many characters."),
    num: int = typer.Option(1, help="Samples per prompt."),
    seed: int = typer.Option(0, help="Random seed."),
    backend: Optional[str] = typer.Option(
        None, help="tensorflow or jax (default: KERAS_BACKEND, else tensorflow where it is installed, else jax)."
    ),
) -> None:
    """Sample continuations: temperature, then top-k, then top-p (as Hugging Face's warpers); stops at EOS."""
    from gpt2ja.model import backend as backends

    backends.use(backend)  # before any model code imports Keras
    from gpt2ja.model.generate import generate_run

    samples = generate_run(
        run,
        prompt,
        num=num,
        max_chars=max_chars,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        seed=seed,
    )
    for sample in samples:
        print(f"--- prompt {sample.prompt!r} (stopped: {sample.stopped})")
        print(sample.prompt + sample.text)


export_app = typer.Typer(
    help="Export a trained run (Hugging Face) or a clean corpus (Parquet) to other formats.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(export_app, name="export")


@export_app.command("hf")
def export_hf_command(
    run: str = typer.Option(..., "--run", help="A run directory."),
    out: str = typer.Option(..., "--out", help="Where the Hugging Face model goes (local or gs://)."),
    push_to_hub: str | None = typer.Option(
        None,
        "--push-to-hub",
        metavar="REPO",
        help="Then upload it to this Hub model repo (owner/name), created if "
        "missing; token from HF_TOKEN, endpoint from HF_ENDPOINT.",
    ),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private (with --push-to-hub)."),
    backend: Optional[str] = typer.Option(
        None, help="tensorflow or jax (default: KERAS_BACKEND, else tensorflow where it is installed, else jax)."
    ),
) -> None:
    """Export a run as a Hugging Face GPT2LMHeadModel (config.json, model.safetensors, tokenizer, model card),
    verified by logits; optionally push it to the Hub."""
    from gpt2ja.model import backend as backends

    backends.use(backend)  # before any model code imports Keras
    from gpt2ja.model.export import export_hf
    from gpt2ja.model.export import push_to_hub as push

    try:
        uri = export_hf(run, out)
        print(f"exported {run} → {uri} (logits checked against transformers' GPT2LMHeadModel)")
        if push_to_hub:
            print(f"pushed {uri} → {push(uri, push_to_hub, private=private)}")
    except ImportError as exc:  # torch / transformers / safetensors / huggingface_hub are the `export` extra
        _fail(f"the export needs torch and transformers ({exc.name} is missing): pip install -e '.[export]'", 1)


@export_app.command("parquet")
def export_parquet_command(
    corpus: str = typer.Option(..., "--corpus", help="A clean corpus directory (local or gs://)."),
    out: str = typer.Option(
        ..., "--out", help="Where the Parquet files go (local or gs://), e.g. data/export/aozora-parquet."
    ),
    compression: Optional[str] = typer.Option(None, help="Column compression: zstd (default), snappy, gzip or none."),
    row_group_docs: Optional[int] = typer.Option(
        None, "--row-group-docs", help="Documents per row group (default 1,000; a group also ends at 32 MiB of text)."
    ),
) -> None:
    """Export a clean corpus as Parquet: one file per part; columns id, source, url, title, author, text,
    license, fetched_at, split, meta (JSON text)."""
    from gpt2ja.corpus.parquet import ParquetConfig, export_parquet, summary
    from gpt2ja.infra import storage

    cfg = _settings(
        ParquetConfig,
        "parquet",
        None,
        None,
        {"corpus": corpus, "out": out, "compression": compression, "row_group_docs": row_group_docs},
    )
    uri, did = export_parquet(cfg)
    print(summary(storage.read_manifest(uri), did))


@app.command("run")
def run_pipeline(
    config: Path = typer.Argument(..., help="A pipeline YAML, e.g. configs/pipeline-demo.yaml.", metavar="CONFIG.yaml"),
) -> None:
    """Run the Prefect pipeline of one config: crawl → clean → tokenizer → shards, then train → evaluate →
    export when the config has those sections; finished stages are skipped (no server needed)."""
    from gpt2ja.flows.pipeline import cli_run

    cli_run(str(config))


@app.command()
def extract(path: Path = typer.Argument(..., help="An Aozora .txt, .zip or XHTML .html file.")) -> None:
    """Print the plain UTF-8 text of a local Aozora file (notation, header and footer removed)."""
    from gpt2ja.crawler.extract.aozora import extract_path

    got = extract_path(str(path))
    sys.stdout.write(got.text + "\n")


@app.command()
def show(uri: str = typer.Argument(..., help="An artifact directory (local or gs://).")) -> None:
    """Print an artifact's manifest: stage, counts, drops, files."""
    from gpt2ja.infra.stage import require

    manifest = require(uri, "artifact", "rerun the stage that writes it")
    print(
        json.dumps(
            {k: manifest[k] for k in ("stage", "counts", "timings", "code_version", "created_at") if k in manifest},
            ensure_ascii=False,
            indent=2,
        )
    )
    print(f"{len(manifest.get('files', []))} files, fingerprint {manifest.get('fingerprint', '')[:16]}")


@app.command()
def serve(
    config: Path = typer.Argument(
        Path("configs/serve-demo.yaml"), help="A serve config: the pipeline YAML and the corpus-refresh schedule."
    ),
    port: int = typer.Option(4200, help="Port of the local Prefect server (127.0.0.1) started when none answers."),
    check: bool = typer.Option(False, "--check", help="Build the deployments and list them; start nothing."),
) -> None:
    """Serve the Prefect deployments (scheduled corpus refresh, pipeline, train and each stage) until Ctrl-C.

    Uses PREFECT_API_URL when it answers; otherwise starts a Prefect server (SQLite) on
    127.0.0.1 and stops it again on Ctrl-C. Analytics are off.
    """
    from gpt2ja.flows.deployments import cli_serve

    cli_serve(str(config), port=port, check=check)


@app.command("serve-mirror")
def serve_mirror(
    directory: Path = typer.Argument(Path("examples/aozora-mirror"), help="The folder to serve."),
    port: int = typer.Option(8000, help="Port on 127.0.0.1."),
) -> None:
    """Serve a local site mirror on 127.0.0.1 (for crawling it) until Ctrl-C."""
    import time

    from gpt2ja.crawler.mirror import MirrorServer

    if not directory.is_dir():
        _fail(f"{directory} is not a directory")
    with MirrorServer(str(directory), port=port) as server:
        print(f"serving {directory} at {server.url('/')} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@app.command()
def demo(root: str = typer.Option("data/demo", "--root", help="Where the demo writes its artifacts.")) -> None:
    """Run the whole pipeline on the bundled Aozora Bunko slice: crawl it from 127.0.0.1, clean, tokenize,
    shard, train a tiny model for a few minutes, evaluate, sample and export it."""
    from gpt2ja.demo import run_demo

    run_demo(root)


# Option values as people read them (click would print the Python type: `<list[str]>`)
URI_OPTIONS = {
    "root",
    "out",
    "run",
    "data",
    "corpus",
    "tokenizer",
    "init_from",
    "inputs",
    "in_",
    "shards",
    "clean",
    "raw",
    "out_dir",
}
URL_OPTIONS = {"seed", "sitemap", "start_url", "start_urls"}
METAVARS = {
    "sets": "KEY=VALUE",
    "set": "KEY=VALUE",
    "push_to_hub": "OWNER/NAME",
    "text": "PATH",
    "config": "YAML",
    "prompt": "TEXT",
}
# What people type from other tools' habits, and our name for it: `--lr` is nanoGPT's, `--max-steps` HF's
ALIASES = {
    "--lr": "--learning-rate",
    "--max-steps": "--steps",
    "--max_steps": "--steps",
    "--batch-size": "--micro-batch",
    "--output": "--out",
    "--output-dir": "--out",
    "--out-dir": "--out",
    "--model": "--preset",
    "--warmup": "--warmup-steps",
    "--temp": "--temperature",
    "--topk": "--top-k",
    "--topp": "--top-p",
    "--top_k": "--top-k",
    "--top_p": "--top-p",
    "--vocab": "--vocab-size",
    "--in": "--in",
    "--input": "--in",
    "--seq-length": "--seq-len",
    "--context": "--seq-len",
}


def _metavars(command) -> None:
    """Give every value option of ``command`` (a click command or group, recursively) a readable metavar.

    Duck-typed: typer ≥ 0.20 runs on its own private copy of click, whose classes are not click's.
    """
    for sub in getattr(command, "commands", {}).values():
        _metavars(sub)
    for param in command.params:
        desc = getattr(param, "type_descriptor", None)
        if not hasattr(param, "is_flag") and param.metavar is None and param.name:  # an argument: `PATH`, not `{path}`
            param.metavar = param.name.upper()
            continue
        if getattr(param, "is_flag", True) or param.metavar is not None or desc is None or desc.is_choice:
            continue  # an argument, a flag, a metavar of its own, or choices (typer lists those itself)
        name, kind = param.name or "", param.display_type(None).strip("<>").removeprefix("list[")
        if name in METAVARS:
            param.metavar = METAVARS[name]
        elif name in URI_OPTIONS:
            param.metavar = "URI"
        elif name in URL_OPTIONS:
            param.metavar = "URL"
        elif kind.startswith(("path", "Path", "file")):
            param.metavar = "PATH"
        elif kind.startswith("int"):
            param.metavar = "N"
        elif kind.startswith("float"):
            param.metavar = "X"
        else:
            param.metavar = "TEXT"


def _no_such_option(exc) -> str:
    """click's NoSuchOption in our words, with the closest real option (and the common aliases)."""
    import difflib

    ctx = exc.ctx
    options = sorted(
        {o for p in (ctx.command.params if ctx else []) for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    )
    name = exc.option_name
    guess = ALIASES.get(name.split("=", 1)[0]) if ALIASES.get(name.split("=", 1)[0]) in options else None
    guess = guess or next(iter(difflib.get_close_matches(name, options, n=1, cutoff=0.6)), None)
    guess = guess or next((o for o in options if name.lstrip("-") and name.lstrip("-") in o), None)
    where = f"'{ctx.command_path}'" if ctx else "this command"
    hint = f"; did you mean {guess}?" if guess else ""
    return f"{where} has no option {name}{hint} (see '{ctx.command_path if ctx else 'gpt2ja'} --help')"


INTERRUPTED = "error: interrupted; rerun the same command to resume (finished work is kept)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's errors become one line, not a usage block or a traceback."""
    from gpt2ja.infra.errors import Gpt2jaError

    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["run"], ["demo"]) and "--help" not in args:
        from gpt2ja.infra.lifetime import reap_when_gone

        reap_when_gone()  # Prefect's temporary server must not outlive a killed run
    command = typer.main.get_command(app)
    _metavars(command)
    try:
        rv = command.main(args=args, prog_name="gpt2ja", standalone_mode=False)
    except Gpt2jaError as exc:  # an error for people, from any command: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except (typer.Exit, SystemExit) as exc:
        code = exc.exit_code if isinstance(exc, typer.Exit) else exc.code
        if code == 130:  # Prefect ends a flow run that got Ctrl-C with status 130 itself
            print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(code) from None
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C: what is finished is kept, the rest resumes
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help is the answer
            print(exc.format_message())
            raise SystemExit(0) from None
        if type(exc).__name__ == "NoSuchOption":  # `--lr`: the closest real option, or its name here
            print(f"error: {_no_such_option(exc)}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    if isinstance(rv, int):  # click returns the code of a typer.Exit when not standalone
        if rv == 130:  # typer turns a KeyboardInterrupt (a flow run Prefect ended on Ctrl-C) into Exit(130)
            print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(rv)

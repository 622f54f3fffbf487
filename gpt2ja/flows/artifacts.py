"""What each stage shows in the Prefect UI, and the pipeline's summary: read from the stages' manifests.

Presentation only: every number here is read back from an artifact's
``_MANIFEST.json`` (or the files it lists), never computed by the flows. Each
stage publishes a table artifact keyed ``{stage}-{name}`` (lowercase, dashes):

    crawl-{source}-{crawl_id}   documents, characters, pages, drops by reason
    clean-{corpus}              documents in and per split, characters, drops by reason
    tokenizer-{name}            kind, vocabulary, characters and bytes per token, byte fallback
    shards-{dataset}            documents, tokens, examples and dropped tokens per split
    train-{run}                 step, loss, validation loss, learning rate, tokens/s
    train-{run}-loss-curve      Markdown: the loss curve (an embedded PNG)
    train-{run}-progress        progress (percent of the run's steps), updated in place while it trains
    evaluate-{run}              bits per character, bits per byte, token perplexity, counts, and the
                                compression baselines (PPMd order 8 alone and primed, gzip, xz)
    samples-{run}               Markdown: the continuations with their sampling settings
    export-{run}                the export's files, size and logit check
    pipeline-{root}             Markdown: the summary :func:`summary` prints

While a run trains, :class:`TrainLive` keeps the UI current: the progress
artifact at each log step (at most every :data:`PROGRESS_EVERY_S` seconds), and
a new version of ``train-{run}`` and ``train-{run}-loss-curve`` at each
evaluation (an artifact created again under its key is a new version; the UI
shows the latest). :class:`Progress` is the same progress artifact for any long
task that can report ``(done, total)``.

Example::

    summary(config, pipeline(config))   # the lines `make demo` ends with
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from gpt2ja.infra import storage


def key(*parts: str) -> str:
    """An artifact key (lowercase letters, digits, dashes), e.g. ``key("train", "tiny-demo")``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def name_of(uri: str) -> str:
    """The last path segment of an artifact URI (``data/runs/tiny-demo`` → ``tiny-demo``)."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def stage_progress(stage: str, out: str) -> Iterator[None]:
    """Follow a data stage's phases in the UI: one progress artifact per phase while the block runs.

    The stage reports through :mod:`gpt2ja.infra.progress` (its bars and lines); each phase
    with a known total (``clean: filter``, ``clean: dedup``, ``shards: encode``…)
    becomes the artifact ``{stage}-{name}-progress-{phase}``, throttled as
    :class:`Progress` is. Phases that ended are set to 100 % when the block ends.
    """
    from gpt2ja.infra import progress as infra_progress

    trackers: dict[str, Progress] = {}

    def listen(desc: str, done: int, total: int | None) -> None:
        if not total:
            return
        phase = key(desc.split(":", 1)[-1]) or "work"
        if phase not in trackers:
            trackers[phase] = Progress(key(stage, name_of(out), "progress", phase), f"{stage} {out}: {desc}")
        trackers[phase](done, total)

    with infra_progress.listening(listen):
        yield
    for tracker in trackers.values():
        tracker.finish()


def table(artifact_key: str, rows: list[dict], description: str) -> None:
    create_table_artifact(key=artifact_key, table=rows, description=description)


def markdown(artifact_key: str, text: str, description: str) -> None:
    create_markdown_artifact(key=artifact_key, markdown=text, description=description)


def drops_rows(counts: dict) -> list[dict]:
    return [{"measure": f"dropped: {reason}", "value": n} for reason, n in sorted((counts.get("drops") or {}).items())]


def _manifest(uri: str) -> dict:
    return storage.read_manifest(uri) or {}


# ----------------------------------------------------------------- one artifact per stage


def crawl(source: str, crawl_id: str, uri: str) -> None:
    c = _manifest(uri).get("counts", {})
    rows = [{"measure": k, "value": c[k]} for k in ("documents", "characters", "pages_fetched", "files_read") if k in c]
    if c.get("warc"):  # the raw responses kept beside the documents (gpt2ja.crawler.warc_writer)
        rows.append({"measure": "warc responses", "value": c["warc"].get("records", {}).get("response", 0)})
    table(key("crawl", source, crawl_id), rows + drops_rows(c), f"crawl {source}/{crawl_id}: {uri}")


def clean(uri: str) -> None:
    c = _manifest(uri)["counts"]
    rows = [
        {"measure": "documents in", "value": c["documents_in"]},
        *({"measure": f"{s} documents", "value": v["documents"]} for s, v in c["splits"].items()),
        *({"measure": f"{s} characters", "value": v["characters"]} for s, v in c["splits"].items()),
        {"measure": "characters out", "value": c["characters_out"]},
    ]
    table(key("clean", name_of(uri)), rows + drops_rows(c), f"clean corpus {uri} (report: {uri}/report.md)")


def tokenizer(uri: str) -> None:
    m = _manifest(uri)
    rows = [
        {"measure": "kind", "value": m.get("kind")},
        *({"measure": k, "value": v} for k, v in (m.get("counts") or {}).items() if not isinstance(v, dict)),
        *({"measure": k, "value": v} for k, v in (m.get("stats") or {}).items() if not isinstance(v, dict)),
    ]
    val = (m.get("stats") or {}).get("validation") or {}
    if val.get("tokens"):
        rows += [
            {"measure": "validation bytes_per_token", "value": val.get("bytes_per_token")},
            {
                "measure": "validation byte_fallback_share",
                "value": round((val.get("byte_fallback_tokens") or 0) / val["tokens"], 5),
            },
        ]
    table(key("tokenizer", name_of(uri)), rows, f"tokenizer {uri}")


def shards(uri: str) -> None:
    c = _manifest(uri)["counts"]
    rows = [{"split": s, **v} for s, v in c["splits"].items()]
    table(key("shards", name_of(uri)), rows, f"TFRecord shards {uri} ({c['shards']} files)")


def train(run_uri: str, metrics: list[dict] | None = None, *, running: str = "") -> None:
    """The loss per logged step (table) and the loss curve (Markdown with the PNG embedded as a data URI).

    ``metrics`` default to the run's ``metrics.jsonl``; ``running`` (``"step 500/20,000"``)
    marks a version published while the run trains (:class:`TrainLive`).
    """
    from gpt2ja.model.evaluate import loss_curve_png, read_metrics

    metrics = read_metrics(run_uri) if metrics is None else metrics
    name = name_of(run_uri)
    cols = ("step", "loss", "val_loss", "lr", "tokens_per_s")
    rows = [{c: (round(m[c], 6) if isinstance(m.get(c), float) else m.get(c)) for c in cols} for m in metrics]
    so_far = f" (training, at {running})" if running else ""
    table(key("train", name), rows, f"training run {run_uri}: loss per logged step (metrics.jsonl){so_far}")
    png = base64.b64encode(loss_curve_png(metrics, f"{name} (training{', ' + running if running else ''})"))
    markdown(
        key("train", name, "loss-curve"),
        f"# Loss of {run_uri}{so_far}\n\n![loss curve](data:image/png;base64,{png.decode('ascii')})\n\n"
        f"{_loss_words(metrics)}\n",
        f"loss curve of {run_uri}{so_far}",
    )


# ----------------------------------------------------------------- live: while a stage runs

#: seconds between two updates of a progress artifact (its first value and 100 % are never held back):
#: one small API call every few seconds costs a training step nothing measurable
PROGRESS_EVERY_S = 5.0
#: a run with no evaluation for this long (none configured, or far apart) publishes its table at a log step
TABLE_EVERY_S = 600.0

log = logging.getLogger("gpt2ja.artifacts")


def _warn(what: str, err: Exception) -> None:
    """A live artifact could not be written: one line in the run's log; the work goes on without it."""
    line = f"{what}: {type(err).__name__}: {err}; the work goes on without it"
    try:
        from prefect import get_run_logger

        get_run_logger().warning(line)
    except Exception:  # noqa: BLE001 - outside a flow or task run
        log.warning(line)


class Progress:
    """A progress artifact (percent done) that follows a long task in the UI; cheap enough to call at every step.

    Created at ``start`` percent; each call ``progress(done, total)`` sends the new
    percent when it changed and ``every_s`` (default :data:`PROGRESS_EVERY_S`) seconds
    have passed since the last update; ``done == total`` (100 %) is always sent. The
    artifact is updated in place (one artifact, no versions). An update that fails
    (the API unreachable) is logged once, and the task goes on without further ones.

    Any stage that reports ``(done, total)`` is wired with one line, e.g. for the clean
    stage's parts::

        progress = Progress(key("clean", name_of(out), "progress"), f"clean {out}: parts done")
        for i, part in enumerate(parts, 1):
            ...
            progress(i, len(parts))
    """

    def __init__(
        self,
        artifact_key: str,
        description: str,
        *,
        start: float = 0.0,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.key, self.description = artifact_key, description
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self._clock = clock
        self._id = None
        self._sent: float | None = None  # the percent the artifact shows
        self._sent_at = 0.0
        self._broken = False
        self._send(start)

    @property
    def percent(self) -> float | None:
        """What the artifact shows (None: it could not be created)."""
        return self._sent

    def __call__(self, done: float, total: float) -> None:
        if total <= 0:
            return
        percent = round(min(100.0, max(0.0, 100.0 * done / total)), 1)
        if percent == self._sent or (percent < 100 and self._clock() - self._sent_at < self.every_s):
            return
        self._send(percent)

    def finish(self) -> None:
        """100 %: the task is done (a task that failed keeps the percent it reached)."""
        if self._sent != 100.0:
            self._send(100.0)

    def _send(self, percent: float) -> None:
        if self._broken:
            return
        try:
            if self._id is None:
                self._id = create_progress_artifact(percent, key=self.key, description=self.description)
            else:
                update_progress_artifact(self._id, percent)
        except Exception as err:  # noqa: BLE001 - the UI's view must never stop the work
            self._broken = True
            _warn(f"progress artifact {self.key}", err)
            return
        self._sent, self._sent_at = percent, self._clock()


class TrainLive:
    """What the UI shows of a training run while it trains; pass :meth:`on_log` as ``train()``'s ``on_log``.

    * ``train-{run}-progress``: percent of ``steps`` done, from the task's start (a
      resumed run starts where its ``metrics.jsonl`` ends), updated at the log steps
      as :class:`Progress` allows; :meth:`finish` sets 100 %.
    * ``train-{run}`` and ``train-{run}-loss-curve``: a new version at each evaluation
      (a record with ``val_loss``), and at a log step when :data:`TABLE_EVERY_S` passed
      without one, from the records so far; the final version is :func:`train`'s.

    Example (what ``gpt2ja.flows.stages.train_task`` does)::

        live = TrainLive(run_uri, cfg.steps)
        gpt2ja.model.train.train(cfg, on_log=live.on_log)
        live.finish()
    """

    def __init__(self, run_uri: str, steps: int, *, clock: Callable[[], float] = time.monotonic):
        from gpt2ja.model.evaluate import read_metrics

        self.run_uri, self.steps = run_uri, steps
        self._clock = clock
        self._metrics = read_metrics(run_uri)  # a resumed run's records (those past its checkpoint go at the 1st log)
        self._resumed = False
        self._table_at = clock()
        self._table_broken = False
        done = min(self._metrics[-1]["step"], steps) if self._metrics else 0
        self.progress = Progress(
            key("train", name_of(run_uri), "progress"),
            f"training run {run_uri}: percent of its {steps:,} steps done",
            start=round(100.0 * done / steps, 1),
            clock=clock,
        )

    def on_log(self, step: int, record: dict) -> None:
        if not self._resumed:  # a resumed run rewrote metrics.jsonl up to its checkpoint: drop what came after
            self._metrics = [m for m in self._metrics if m["step"] < step]
            self._resumed = True
        self._metrics.append(record)
        self.progress(step, self.steps)
        if "val_loss" in record or self._clock() - self._table_at >= TABLE_EVERY_S:
            self._table(step)

    def finish(self) -> None:
        self.progress.finish()

    def _table(self, step: int) -> None:
        if self._table_broken:
            return
        try:
            train(self.run_uri, self._metrics, running=f"step {step:,}/{self.steps:,}")
        except Exception as err:  # noqa: BLE001 - the UI's view must never stop the training
            self._table_broken = True
            _warn(f"loss table of {self.run_uri} while training", err)
        self._table_at = self._clock()


def evaluation(eval_uri: str) -> None:
    """The figures (table) and the samples with their sampling settings (Markdown)."""
    from gpt2ja.model.evaluate import SAMPLES

    result = json.loads(storage.read_text(storage.join(eval_uri, "eval.json")))
    name = name_of(result["run"])
    keys = (
        "bits_per_character",
        "bits_per_byte",
        "token_perplexity",
        "bits_per_token",
        "tokens_per_character",
        "texts",
        "characters",
        "bytes",
        "tokens",
        "context",
        "stride",
        "step",
    )
    base = result.get("baselines") or {}
    base_keys = (
        "ppmd_order8_bits_per_character",
        "ppmd_order8_bits_per_byte",
        "ppmd_order8_primed_bits_per_character",
        "ppmd_order8_primed_bits_per_byte",
        "prime_characters",
        "gzip_bits_per_character",
        "gzip_bits_per_byte",
        "xz_bits_per_character",
        "xz_bits_per_byte",
        "model_beats_ppmd_order8",
        "model_beats_ppmd_order8_primed",
    )
    rows = [{"measure": k, "value": result.get(k)} for k in keys]
    rows += [{"measure": k, "value": base.get(k)} for k in base_keys if base]
    table(
        key("evaluate", name),
        rows,
        f"evaluation of {result['run']} on {', '.join(result['texts_from'])} ({eval_uri}/report.md)",
    )
    samples = _samples(eval_uri, SAMPLES)
    if samples:
        markdown(key("samples", name), samples_markdown(result["run"], samples), f"samples of {result['run']}")


def samples_markdown(run_uri: str, samples: list[dict]) -> str:
    """Markdown: the sampling settings, then each prompt + continuation in a text block."""
    lines = [f"# Samples of {run_uri}", "", f"Sampling: {sampling_words(samples[0])}.", ""]
    for i, s in enumerate(samples, 1):
        lines += [f"{i}. stopped: {s['stopped']}", "", "```text", s["prompt"] + s["text"], "```", ""]
    return "\n".join(lines)


def export(uri: str, run_uri: str) -> None:
    m = _manifest(uri)
    rows = [{"file": f["path"], "bytes": f["bytes"], "sha256": f["sha256"][:16]} for f in m.get("files", [])]
    table(
        key("export", name_of(run_uri)),
        rows,
        f"Hugging Face export of {run_uri} at {uri}: step {m.get('counts', {}).get('step')}, logits checked "
        f"against transformers (max difference {m.get('max_logit_diff', float('nan')):.2g})",
    )


# ----------------------------------------------------------------- words


def sampling_words(s: dict) -> str:
    """``temperature 1.0, top-k 40, top-p 0.9, ≤ 60 characters, seed 0`` from a sample row."""
    return (
        f"temperature {float(s.get('temperature', 1.0))}, top-k {s.get('top_k') or 'off'}, "
        f"top-p {s.get('top_p', 1.0):g}, ≤ {s.get('max_chars')} characters, seed {s.get('seed', 0)}"
    )


def _loss_words(metrics: list[dict]) -> str:
    train = [m for m in metrics if "loss" in m]
    val = [m for m in metrics if "val_loss" in m]
    words = []
    if train:
        words.append(
            f"training loss {train[0]['loss']:.3f} (step {train[0]['step']}) → {train[-1]['loss']:.3f} "
            f"(step {train[-1]['step']})"
        )
    if val:
        words.append(f"validation loss {val[-1]['val_loss']:.3f} ({val[-1]['val_loss'] / math.log(2):.3f} bits/token)")
    return "; ".join(words) or "no metrics logged"


def _samples(eval_uri: str, name: str) -> list[dict]:
    try:
        text = storage.read_text(storage.join(eval_uri, name))
    except storage.StorageError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _size(uri: str) -> str:
    m = _manifest(uri)
    total = sum(f.get("bytes", 0) for f in m.get("files", []))
    return (
        f"{len(m.get('files', []))} files, {total / 2**20:.1f} MiB"
        if total >= 2**20
        else f"{len(m.get('files', []))} files, {total / 2**10:.0f} KiB"
    )


def _status(result: dict) -> str:
    return "skipped: up to date" if result["skipped"] else "built"


def summary(config, outcome: dict) -> str:
    """What the pipeline made: documents and characters per stage, the model's figures, samples, where it all is.

    ``config`` is the :class:`gpt2ja.flows.config.PipelineConfig`, ``outcome`` what the
    ``pipeline`` flow returned; everything else is read from the manifests.
    """
    out = ["", f"Pipeline summary ({config.root})", ""]
    where = []
    for r in outcome["crawl"]:
        c = _manifest(r["uri"])["counts"]
        drops = ", ".join(f"{k} {v}" for k, v in sorted((c.get("drops") or {}).items())) or "nothing"
        pages = f", {c['pages_fetched']:,} pages fetched" if "pages_fetched" in c else ""
        out.append(
            f"  crawl      {c['documents']:,} documents, {c['characters']:,} characters{pages}; "
            f"dropped: {drops}  [{_status(r)}]"
        )
        where.append(("crawl", f"{r['uri']}/part-*.jsonl.gz"))
    c = _manifest(outcome["clean"]["uri"])["counts"]
    splits = " + ".join(f"{v['documents']:,} {s} ({v['characters']:,} characters)" for s, v in c["splits"].items())
    drops = ", ".join(f"{k} {v}" for k, v in sorted(c["drops"].items())) or "nothing"
    out.append(
        f"  clean      {c['documents_in']:,} documents in → {splits}; dropped: {drops}  [{_status(outcome['clean'])}]"
    )
    where.append(("clean", f"{outcome['clean']['uri']}/{{train,validation}}/part-*.jsonl.gz, report.md"))
    m = _manifest(outcome["tokenizer"]["uri"])
    stats, counts = m.get("stats") or {}, m.get("counts") or {}
    val = stats.get("validation") or {}
    fallback = (
        f", {val['byte_fallback_tokens'] / val['tokens']:.2%} byte fallback"
        if val.get("tokens") and val.get("byte_fallback_tokens") is not None
        else ""
    )  # bytes: no fallback
    kind = m.get("kind", "?") + (
        f" {(m.get('config') or {}).get('model_type')}" if (m.get("config") or {}).get("model_type") else ""
    )
    out.append(
        f"  tokenizer  {kind}, {counts.get('vocab_size', '?'):,} ids; "
        f"{stats.get('chars_per_token', float('nan')):.3f} characters/token on "
        f"{val.get('characters', 0):,} validation characters{fallback}  [{_status(outcome['tokenizer'])}]"
    )
    where.append(("tokenizer", outcome["tokenizer"]["uri"]))
    m = _manifest(outcome["shards"]["uri"])
    c = m["counts"]
    per = "; ".join(
        f"{s} {v['documents']:,} documents, {v['tokens']:,} tokens, {v['examples']:,} examples"
        for s, v in c["splits"].items()
    )
    out.append(
        f"  shards     {per}; examples of {m.get('example_len')} ids in {c['shards']} files  "
        f"[{_status(outcome['shards'])}]"
    )
    where.append(("shards", f"{outcome['shards']['uri']} ({_size(outcome['shards']['uri'])})"))
    if "train" in outcome:
        from gpt2ja.model.evaluate import read_metrics

        run = outcome["train"]["uri"]
        m = _manifest(run)
        tc = m.get("counts", {})
        out.append(
            f"  train      {config.train.preset or 'init_from'}, {tc.get('parameters', 0):,} parameters, "
            f"{tc.get('steps', 0):,} steps ({tc.get('tokens', 0):,} tokens): {_loss_words(read_metrics(run))}  "
            f"[{_status(outcome['train'])}]"
        )
        where.append(("train", f"{run} (checkpoints/, metrics.jsonl, tensorboard/, hparams.json)"))
    if "evaluate" in outcome:
        ev = outcome["evaluate"]["uri"]
        r = json.loads(storage.read_text(storage.join(ev, "eval.json")))
        out.append(
            f"  evaluate   {r['bits_per_character']:.3f} bits/character, {r['bits_per_byte']:.3f} bits/byte, "
            f"token perplexity {r['token_perplexity']:.1f} on {r['characters']:,} held-out characters "
            f"({r['tokens']:,} tokens)  [{_status(outcome['evaluate'])}]"
        )
        if r.get("baselines"):
            from gpt2ja.model.baselines import verdict

            b = r["baselines"]
            primed = b.get("ppmd_order8_primed_bits_per_character")
            out.append(
                f"  baselines  PPMd order 8 {b['ppmd_order8_bits_per_character']:.3f} bits/character"
                + (
                    f" ({primed:.3f} primed with {b['prime_characters']:,} training characters)"
                    if primed is not None
                    else " (not primed)"
                )
                + f", gzip -9 {b['gzip_bits_per_character']:.3f}, xz -9e {b['xz_bits_per_character']:.3f}"
            )
            out += [f"             {line}" for line in verdict(r["bits_per_character"], b)]
        from gpt2ja.model.evaluate import SAMPLES

        samples = _samples(ev, SAMPLES)
        if samples:
            out.append(f"  generate   {len(samples)} continuation(s); {sampling_words(samples[0])}:")
            for s in samples:
                out.append("    · " + (s["prompt"] + s["text"]).replace("\n", " ⏎ "))
        where.append(("evaluate", f"{ev} (eval.json, samples.jsonl, loss.png, report.md)"))
    if "export" in outcome:
        ex = outcome["export"]["uri"]
        m = _manifest(ex)
        out.append(
            f"  export     Hugging Face GPT2LMHeadModel, logits equal to the run's within "
            f"{m.get('max_logit_diff', float('nan')):.1g}  [{_status(outcome['export'])}]"
        )
        where.append(("export", f"{ex} ({_size(ex)})"))
    out += ["", "Artifacts (each directory ends with its _MANIFEST.json):"]
    out += [f"  {stage:<10} {path}" for stage, path in where]
    out.append(f"  {'prefect':<10} one table or Markdown artifact per stage (loss curve, samples): {_prefect_where()}")
    return "\n".join(out)


def _prefect_where() -> str:
    """Where this process's flow runs and artifacts are kept, in words."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL

    api = PREFECT_API_URL.value()
    if api:
        return f"on the Prefect server {api}"
    db = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value() or "")
    if db.startswith("sqlite"):  # ephemeral mode: the temporary server used this database
        path = db.split(":///", 1)[-1]
        user = os.path.expanduser("~")
        path = "~" + path[len(user) :] if path.startswith(user) else path
        return f"in Prefect's local database {path}; `prefect server start` shows them"
    return "in Prefect's database"

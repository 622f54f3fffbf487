"""The pipeline's configuration: one YAML file, validated by pydantic models.

The same models are the Prefect flows' parameters, so the UI shows them as forms.
Each section reuses the stage's own config model (``CrawlConfig``, ``FilesConfig``,
``WarcConfig``, ``CleanConfig``, ``TokenizerConfig``, ``ShardsConfig``, ``TrainConfig``,
``EvaluateConfig``, ``GenerateConfig``, ``ExportConfig``: the models of
:data:`gpt2ja.registry.COMMANDS`), so each default has one home; only what the pipeline
decides itself (the run root, where each stage reads and writes) is left out of the sections. The data stages are
required; ``train``, ``evaluate``, ``generate`` and ``export`` are optional (a
pipeline without ``train`` stops after the shards). Example (``configs/demo.yaml``)::

    root: data/demo
    corpus: aozora-demo
    tokenizer_name: sp-unigram-3000
    dataset: sp3000-128
    run: tiny-demo
    crawl:
      - source: aozora
        crawl_id: demo
        serve_mirror: examples/aozora-mirror
        polite: false
        start_urls: [http://mirror.local/index_pages/person879.html]
    tokenizer: {kind: sentencepiece, vocab_size: 3000}
    shards: {seq_len: 128, num_shards: {train: 8, validation: 2}, workers: 1}
    # task_runner: {kind: dask, address: tcp://10.0.0.5:8786}   # clean's and shards' parts on a Dask cluster
    train: {preset: tiny, steps: 120, batch_tokens: 2048, micro_batch: 16, learning_rate: 2.0e-3, warmup_steps: 10}
    evaluate: {}
    generate: {prompts: [ある日の暮方の事である。], num: 3, max_chars: 60, top_k: 40, top_p: 0.9}
    export: {format: hf}

Paths (``root``, ``serve_mirror``, ``directory``, evaluation ``texts``) are relative
to the working directory. ``task_runner`` (:mod:`gpt2ja.flows.runners`) says where the
clean and shards stages run their parts; a ``task_runner`` in the ``clean`` or
``shards`` section overrides the top-level one for that stage.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from gpt2ja.corpus.clean import CleanConfig
from gpt2ja.crawler.files import FilesConfig
from gpt2ja.crawler.runner import CrawlConfig
from gpt2ja.crawler.warc import WarcConfig
from gpt2ja.flows.runners import TaskRunnerConfig
from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.yamlconfig import first_problem, read_yaml, validate
from gpt2ja.model.evaluate import EvaluateConfig
from gpt2ja.model.export import ExportConfig
from gpt2ja.model.generate import GenerateConfig
from gpt2ja.model.train import TrainConfig
from gpt2ja.tokenization.shards import ShardsConfig
from gpt2ja.tokenization.train import TokenizerConfig

#: The host name that start URLs of a ``serve_mirror`` crawl use; replaced by the local server's address.
MIRROR_HOST = "mirror.local"
NAME = r"^[A-Za-z0-9._-]+$"


class ConfigError(Gpt2jaError, ValueError):
    """A bad pipeline config: one line naming the file, the field and the fix."""


def stage_section(
    name: str, model: type[BaseModel], doc: str, *, decided: dict, fill: dict | None = None, **overrides
) -> type[BaseModel]:
    """The pipeline section of a stage: ``model``'s fields without those in ``decided``, ``overrides`` replacing some.

    The pipeline decides the fields of ``decided`` itself (where the stage reads and writes); their values
    there, and those of ``fill`` for an overridden field left None (the pipeline fills it), are placeholders
    with which the section is validated through ``model`` too, so that the stage's own cross-field checks
    apply to the YAML section. Each default stays in ``model``.
    """
    fill = fill or {}

    class Base(BaseModel):
        model_config = ConfigDict(extra="forbid")

        @model_validator(mode="after")
        def _via_stage_model(self):
            given = {k: v for k, v in self.model_dump().items() if v is not None or k not in fill}
            try:
                model.model_validate({**decided, **fill, **given})
            except ValidationError as err:
                raise ValueError(first_problem(err)) from None
            return self

    fields = {k: (f.annotation, f) for k, f in model.model_fields.items() if k not in decided}
    return create_model(name, __base__=Base, __doc__=doc, **{**fields, **overrides})


# ----------------------------------------------------------------- crawl


def _no_root_per_crawl(data):
    """A crawl entry's settings may not name a root: the pipeline has one, at the top level."""
    if isinstance(data, dict) and "root" in data:
        raise ValueError("root is set once for the whole pipeline (the top-level root), not per crawl")
    return data


class SpiderCrawl(CrawlConfig):
    """One Scrapy crawl (``aozora`` or ``web``): every ``CrawlConfig`` field, the root aside.

    ``serve_mirror`` names a local directory served on 127.0.0.1 for the duration of
    the crawl; start URLs and sitemaps on the host ``mirror.local`` are rewritten to
    the server's address (this is how the demo crawls the bundled Aozora mirror).
    """

    model_config = ConfigDict(extra="forbid")

    root: SkipJsonSchema[str] = Field("data", exclude=True)  # set by the pipeline (PipelineConfig.root)
    crawl_id: str = Field(
        pattern=NAME,
        description="names the output {root}/raw/{source}/{crawl_id}; a fixed id lets a rerun skip a finished crawl",
    )
    serve_mirror: str | None = Field(
        None,
        description="a local directory to serve on 127.0.0.1 while crawling; "
        f"URLs on http://{MIRROR_HOST}/ point at it",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_root(cls, data):
        return _no_root_per_crawl(data)

    @field_validator("serve_mirror")
    @classmethod
    def _mirror_exists(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isdir(value):
            raise ValueError(f"serve_mirror: {value} is not a directory (paths are relative to the working directory)")
        return value

    def crawl_config(self, root: str, mirror_url: str | None = None) -> CrawlConfig:
        """The stage's ``CrawlConfig`` under ``root``; ``mirror_url`` replaces ``http://mirror.local``."""
        data = self.model_dump(exclude={"serve_mirror"})
        if mirror_url is not None:
            placeholder = f"http://{MIRROR_HOST}"
            for key in ("start_urls", "sitemaps"):
                data[key] = [
                    u.replace(placeholder, mirror_url.rstrip("/"), 1) if u.startswith(placeholder) else u
                    for u in data[key]
                ]
            # documents keep http://mirror.local/... as their URL, so their ids (and the split) do not
            # depend on the port the mirror happened to be served on
            data["url_alias"] = {**data.get("url_alias", {}), mirror_url.rstrip("/"): placeholder}
        return CrawlConfig(**{**data, "root": root})


class FilesCrawl(FilesConfig):
    """A directory of text files turned into a raw crawl: every ``FilesConfig`` field, the root aside."""

    model_config = ConfigDict(extra="forbid")

    root: SkipJsonSchema[str] = Field("data", exclude=True)  # set by the pipeline (PipelineConfig.root)
    crawl_id: str = Field(pattern=NAME, description="names the output {root}/raw/files/{crawl_id}")

    @model_validator(mode="before")
    @classmethod
    def _no_root(cls, data):
        return _no_root_per_crawl(data)

    def out_uri(self, root: str) -> str:
        return storage.join(root, "raw", "files", self.crawl_id)


class WarcCrawl(WarcConfig):
    """WARC/WET files turned into a raw crawl (``crawler.warc.crawl_warc``): every ``WarcConfig`` field, the root aside.

    Its files are read as parts on ``task_runner`` (one task per file), like the clean stage's parts.
    """

    model_config = ConfigDict(extra="forbid")

    source: Literal["warc"] = "warc"
    root: SkipJsonSchema[str] = Field("data", exclude=True)  # set by the pipeline (PipelineConfig.root)
    crawl_id: str = Field(
        pattern=NAME,
        description="names the output {root}/raw/warc/{crawl_id}; a fixed id lets a rerun skip (or resume) it",
    )
    task_runner: TaskRunnerConfig = Field(
        default_factory=TaskRunnerConfig,
        description="where the files are read: local (a process pool of "
        "`workers`), threads, processes or dask (gpt2ja/flows/runners.py)",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_root(cls, data):
        return _no_root_per_crawl(data)

    def warc_config(self, root: str) -> WarcConfig:
        """The stage's ``WarcConfig`` under ``root``."""
        return WarcConfig(**{**self.model_dump(exclude={"source", "task_runner"}), "root": root})


CrawlEntry = Annotated[Union[SpiderCrawl, FilesCrawl, WarcCrawl], Field(discriminator="source")]


# ----------------------------------------------------------------- clean


_TASK_RUNNER_HELP = (
    "where the stage runs its parts: local (its own process pool), threads, processes or dask "
    "(gpt2ja/flows/runners.py); default: the pipeline's task_runner, else local"
)


class _CleanSectionBase(BaseModel):
    """Validated through ``CleanConfig`` itself, so partial presets merge exactly as ``gpt2ja clean`` does."""

    model_config = ConfigDict(extra="forbid")

    task_runner: TaskRunnerConfig = Field(default_factory=TaskRunnerConfig, description=_TASK_RUNNER_HELP)

    @model_validator(mode="before")
    @classmethod
    def _via_clean_config(cls, data):
        if not isinstance(data, dict):
            return data
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown clean setting(s) {unknown}; known: {sorted(cls.model_fields)}")
        stage = {k: v for k, v in data.items() if k != "task_runner"}  # not a CleanConfig field
        try:
            full = CleanConfig.model_validate({**stage, "inputs": [], "out": "-"})
        except ValidationError as err:
            raise ValueError(first_problem(err)) from None
        runner = {"task_runner": data["task_runner"]} if "task_runner" in data else {}
        return {**full.model_dump(exclude={"inputs", "out"}), **runner}

    def clean_config(self, inputs: list[str], out: str) -> CleanConfig:
        return CleanConfig.model_validate({**self.model_dump(exclude={"task_runner"}), "inputs": inputs, "out": out})


#: ``CleanConfig`` without ``inputs`` and ``out`` (the pipeline fills them from the crawl and the corpus name).
CleanSection = create_model(
    "CleanSection",
    __base__=_CleanSectionBase,
    __doc__="The clean stage's settings (gpt2ja/corpus/clean.py CleanConfig).",
    **{name: (f.annotation, f) for name, f in CleanConfig.model_fields.items() if name not in ("inputs", "out")},
)


# ----------------------------------------------------------------- shards


class ShardsSection(ShardsConfig):
    """The shards stage's settings: ``ShardsConfig`` (gpt2ja/tokenization/shards.py) and where its shards are built.

    Example::

        ShardsSection(seq_len=1024, task_runner={"kind": "dask", "address": "tcp://10.0.0.5:8786"})
    """

    model_config = ConfigDict(extra="forbid")

    task_runner: TaskRunnerConfig = Field(default_factory=TaskRunnerConfig, description=_TASK_RUNNER_HELP)

    def shards_config(self) -> ShardsConfig:
        """The package's config (the runner is the flow's business, and not part of the fingerprint)."""
        return ShardsConfig.model_validate(self.model_dump(exclude={"task_runner"}))


# ----------------------------------------------------------------- tokenizer


#: ``TokenizerConfig`` without ``corpus`` and ``out`` (the pipeline fills them from the corpus and tokenizer names).
TokenizerSection = stage_section(
    "TokenizerSection",
    TokenizerConfig,
    "The tokenizer stage's settings (gpt2ja/tokenization/train.py TokenizerConfig).",
    decided={"corpus": "-", "out": "-"},
)


# ----------------------------------------------------------------- train


class _TrainSectionBase(BaseModel):
    """Validated through ``TrainConfig`` itself, so its cross-field checks (warmup < steps, a model) apply."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _via_train_config(cls, data):
        if not isinstance(data, dict):
            return data
        placed = sorted({"data", "run"} & set(data))
        if placed:
            raise ValueError(
                f"{', '.join(placed)} is set by the pipeline (the shards it built, "
                "{root}/runs/{run}), not in the train section"
            )
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown train setting(s) {unknown}; known: {sorted(cls.model_fields)}")
        try:
            TrainConfig.model_validate({**data, "data": "-", "run": "-"})
        except ValidationError as err:
            raise ValueError(first_problem(err)) from None
        return data

    def train_config(self, data: str, run: str) -> TrainConfig:
        return TrainConfig.model_validate({**self.model_dump(), "data": data, "run": run})


#: ``TrainConfig`` without ``data`` and ``run`` (the pipeline fills them from the shards and the run name).
TrainSection = create_model(
    "TrainSection",
    __base__=_TrainSectionBase,
    __doc__="The train stage's settings (gpt2ja.model.train.TrainConfig): preset, steps, batch, optimizer, strategy.",
    **{name: (f.annotation, f) for name, f in TrainConfig.model_fields.items() if name not in ("data", "run")},
)


# ----------------------------------------------------------------- evaluate, generate, export


#: ``EvaluateConfig`` without ``run`` and ``backend`` (the pipeline's run and its train backend); ``texts``
#: defaults to the corpus's validation split.
EvaluateSection = stage_section(
    "EvaluateSection",
    EvaluateConfig,
    "The evaluate stage: bits per character and per byte, token perplexity (gpt2ja/model/evaluate.py).",
    decided={"run": "-", "backend": None},
    fill={"texts": ["-"]},
    texts=(
        list[str] | None,
        Field(
            None,
            min_length=1,
            description="held-out text: .txt files or clean-corpus split folders; "
            "default: the corpus's validation split",
        ),
    ),
)

#: ``GenerateConfig`` without ``run``, ``backend`` and ``greedy``; the prompts are required. In the pipeline
#: the samples are part of the evaluate stage (``{run}/eval/samples.jsonl``, the report and the UI); the
#: ``generate`` flow samples from any run on demand.
GenerateSection = stage_section(
    "GenerateSection",
    GenerateConfig,
    "Sampled continuations (gpt2ja/model/generate.py): temperature, then top-k, then top-p; fixed seed.",
    decided={"run": "-", "backend": None, "greedy": False},
    prompts=(list[str], Field(min_length=1, description="prompts to continue (an empty string: unconditional)")),
)

#: ``ExportConfig`` without ``run`` and ``out`` ({root}/runs/{run}/export/{format}) and the Hub upload.
ExportSection = stage_section(
    "ExportSection",
    ExportConfig,
    "The export stage (gpt2ja/model/export.py): {root}/runs/{run}/export/{format}.",
    decided={"run": "-", "out": "-", "push_to_hub": None, "private": False, "backend": None},
)


# ----------------------------------------------------------------- the pipeline


class PipelineConfig(BaseModel):
    """crawl → clean → tokenizer → shards [→ train → evaluate + samples → export]; URIs from the names."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="run root: a local directory or gs://bucket/prefix")
    corpus: str = Field(pattern=NAME, description="clean corpus name: {root}/clean/{corpus}")
    tokenizer_name: str = Field(pattern=NAME, description="tokenizer name: {root}/tokenizers/{tokenizer_name}")
    dataset: str = Field(pattern=NAME, description="shards name: {root}/datasets/{corpus}/{dataset}")
    run: str | None = Field(None, pattern=NAME, description="training run name: {root}/runs/{run} (with train)")
    crawl: list[CrawlEntry] = Field(min_length=1, description="the crawls whose documents make the corpus")
    clean: CleanSection = Field(default_factory=CleanSection)  # type: ignore[valid-type]
    tokenizer: TokenizerSection
    shards: ShardsSection
    train: TrainSection | None = Field(  # type: ignore[valid-type]
        None, description="train a GPT-2 on the shards (omit: stop after the shards)"
    )
    evaluate: EvaluateSection | None = Field(None, description="bits per character of the trained run")
    generate: GenerateSection | None = Field(None, description="samples of the trained run (with evaluate)")
    export: ExportSection | None = Field(None, description="export the trained run (omit: no export)")
    task_runner: TaskRunnerConfig | None = Field(
        None,
        description="where clean and shards run their parts unless their section sets its own "
        "(gpt2ja/flows/runners.py; omit: local, each stage's own process pool)",
    )

    @model_validator(mode="after")
    def _sections_inherit_the_task_runner(self) -> "PipelineConfig":
        if self.task_runner is not None:
            for name in ("clean", "shards"):
                section = getattr(self, name)
                if "task_runner" not in section.model_fields_set:
                    setattr(self, name, section.model_copy(update={"task_runner": self.task_runner}))
        return self

    @model_validator(mode="after")
    def _stages_need_their_inputs(self) -> "PipelineConfig":
        if self.train is not None and self.run is None:
            raise ValueError("run: required with a train section (it names {root}/runs/{run})")
        later = [s for s in ("evaluate", "generate", "export") if getattr(self, s) is not None]
        if later and self.train is None:
            raise ValueError(f"{later[0]}: needs a train section (the run it works on)")
        if self.generate is not None and self.evaluate is None:
            raise ValueError(
                "generate: the samples are written by the evaluate stage; add an evaluate section "
                "(evaluate: {} uses the validation split)"
            )
        return self

    @property
    def clean_uri(self) -> str:
        return storage.join(self.root, "clean", self.corpus)

    @property
    def tokenizer_uri(self) -> str:
        return storage.join(self.root, "tokenizers", self.tokenizer_name)

    @property
    def shards_uri(self) -> str:
        return storage.join(self.root, "datasets", self.corpus, self.dataset)

    @property
    def run_uri(self) -> str | None:
        return storage.join(self.root, "runs", self.run) if self.run else None

    @property
    def eval_uri(self) -> str | None:
        from gpt2ja.model.evaluate import EVAL_DIR

        return storage.join(self.run_uri, EVAL_DIR) if self.run else None

    @property
    def eval_texts(self) -> list[str]:
        """What the evaluate stage scores: the configured texts, or the corpus's validation split."""
        return (
            list(self.evaluate.texts)
            if self.evaluate and self.evaluate.texts
            else [storage.join(self.clean_uri, "validation")]
        )

    @property
    def export_uri(self) -> str | None:
        return storage.join(self.run_uri, "export", self.export.format) if self.run and self.export else None


def load_config(path: str) -> PipelineConfig:
    """Read and validate a pipeline YAML file; any problem raises :class:`ConfigError` (one line)."""
    return validate_config(read_yaml(path, ConfigError, example="configs/demo.yaml"), path)


def validate_config(data, where: str) -> PipelineConfig:
    """Validate settings already read (a YAML mapping); problems raise :class:`ConfigError` naming ``where``.

    Example::

        data = yaml.safe_load(open("configs/demo.yaml"))
        validate_config({**data, "root": "/tmp/demo"}, "configs/demo.yaml")
    """
    return validate(
        PipelineConfig,
        data,
        where,
        ConfigError,
        expected="root, corpus, crawl, ...",
        unknown_hint="see configs/demo.yaml for the sections",
    )

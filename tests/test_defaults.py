"""Each stage is defined once: its command's options, the pipeline's section and its model agree.

Every stage command of :data:`gpt2ja.registry.COMMANDS` is checked against its config model: an
option's default is None (the model decides) or the model's own, every command takes ``--config``
and ``--set``, and every model field is a flag or can be given with ``--set``.
"""

from __future__ import annotations

import inspect
import json

import pytest
import typer.main
import yaml
from pydantic import TypeAdapter

from gpt2ja import registry
from gpt2ja.cli import _config_section, _layered, _validated, app, main
from gpt2ja.crawler.runner import CrawlConfig
from gpt2ja.model.generate import DEFAULT_SAMPLING, GenerateConfig

#: the stage commands of the issue: every one of them is generated from the registry
STAGE_COMMANDS = {
    ("crawl", "aozora"),
    ("crawl", "web"),
    ("crawl", "files"),
    ("crawl", "warc"),
    ("clean",),
    ("tokenizer", "train"),
    ("shards",),
    ("train",),
    ("eval",),
    ("generate",),
    ("export", "hf"),
    ("export", "parquet"),
}

#: a value for each field a model requires, so that one field at a time can be set on top
REQUIRED = {
    "start_urls": ["http://x/"],
    "directory": ".",
    "paths": ["x.warc.gz"],
    "inputs": ["data/raw/aozora/x"],
    "out": "data/out",
    "corpus": "data/clean/x",
    "tokenizer": "data/tokenizers/x",
    "seq_len": 128,
    "data": "data/datasets/x",
    "run": "data/runs/x",
    "steps": 10,
    "texts": ["data/clean/x/validation"],
    "vocab_size": 3000,
    "preset": "tiny",
    "warmup_steps": 1,
}


def _command(path: tuple[str, ...]):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _required(command: registry.Command) -> dict:
    """Values for the fields the model requires (and those its cross-field checks need)."""
    fields = command.model.model_fields
    needed = {k for k, f in fields.items() if f.is_required()} | (
        {"preset", "warmup_steps", "vocab_size", "start_urls"} & set(fields)
    )
    return {**{k: v for k, v in REQUIRED.items() if k in needed}, **command.fixed}


def test_every_stage_command_is_in_the_registry_and_on_the_command_line():
    assert {c.path for c in registry.COMMANDS} == STAGE_COMMANDS
    for c in registry.COMMANDS:
        assert _command(c.path).help.startswith(c.help[:40]), c.name


@pytest.mark.parametrize("command", registry.COMMANDS, ids=lambda c: c.name)
def test_options_take_their_defaults_from_the_model(command):
    fields = command.model.model_fields
    params = {p.name: p for p in _command(command.path).params}
    assert {"config", "sets"} <= set(params), command.name
    assert params["config"].opts == ["--config"] and params["sets"].opts == ["--set"]
    for flag in command.flags:
        param = params[flag.field]  # the click parameter is named after the model field
        default = fields[flag.field].get_default(call_default_factory=True)
        # None hands the choice to the model; anything else must be the model's own value
        assert param.default in (None, ()) or param.default == default, (command.name, flag.field, param.default)
        assert param.help, (command.name, flag.field)
        if not fields[flag.field].is_required() and default not in (None, [], {}, "", [""]):
            if fields[flag.field].default_factory is None:  # a machine's or a day's value is described instead
                assert "[default: " in param.help, (command.name, flag.field, param.help)


@pytest.mark.parametrize("command", registry.COMMANDS, ids=lambda c: c.name)
def test_every_model_field_is_a_flag_or_reachable_with_set(command):
    flags = {f.field for f in command.flags}
    for name, field in command.model.model_fields.items():
        if name in flags or name in command.fixed:
            continue
        value = REQUIRED[name] if name in REQUIRED else field.get_default(call_default_factory=True)
        written = TypeAdapter(field.annotation).dump_python(value, mode="json")  # as YAML (JSON is YAML) says it
        item = f"{name}={written if isinstance(written, str) else json.dumps(written, ensure_ascii=False)}"
        data = _layered(_required(command), [item], {})
        cfg = _validated(command.model, command.section, "test", data)
        assert getattr(cfg, name) == value, (command.name, name)


def test_the_stage_models_describe_every_field():
    """The models of the stages that had none describe each field (the help and the Prefect forms show it)."""
    for path in (("crawl", "files"), ("tokenizer", "train"), ("shards",), ("eval",), ("generate",), ("export", "hf")):
        model = registry.command(path).model
        missing = [name for name, field in model.model_fields.items() if not field.description]
        assert not missing, (model.__name__, missing)


def test_set_and_flags_override_the_config_section(tmp_path):
    """config section < --set < flags, as the generated commands layer them."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"generate": {"prompts": ["a"], "num": 2, "top_k": 5, "seed": 3}}))
    data = _layered(_config_section(config, "generate", None), ["top_k=7", "num=4"], {"num": 9, "run": "r"})
    cfg = _validated(GenerateConfig, "generate", str(config), data)
    assert (cfg.prompts, cfg.top_k, cfg.num, cfg.seed, cfg.run) == (["a"], 7, 9, 3, "r")


def test_a_pipeline_configs_crawl_entry_serves_crawl_files(tmp_path):
    config = tmp_path / "p.yaml"
    entries = [{"source": "aozora", "crawl_id": "a"}, {"source": "files", "directory": "d", "crawl_id": "mine"}]
    config.write_text(yaml.safe_dump({"crawl": entries}))
    assert _config_section(config, "crawl", "files") == entries[1]


def test_sampling_defaults_are_one_value_everywhere():
    assert {k: GenerateConfig.model_fields[k].default for k in DEFAULT_SAMPLING} == DEFAULT_SAMPLING
    from gpt2ja.flows.config import GenerateSection
    from gpt2ja.model.generate import generate

    assert {k: GenerateSection.model_fields[k].default for k in DEFAULT_SAMPLING} == DEFAULT_SAMPLING
    sig = inspect.signature(generate).parameters
    assert {k: sig[k].default for k in DEFAULT_SAMPLING} == DEFAULT_SAMPLING


def test_the_pipeline_sections_are_the_stage_models_less_what_the_pipeline_decides():
    from gpt2ja.flows import config as flows

    sections = {
        flows.TokenizerSection: registry.command("tokenizer train").model,
        flows.EvaluateSection: registry.command("eval").model,
        flows.GenerateSection: registry.command("generate").model,
        flows.ExportSection: registry.command("export hf").model,
        flows.TrainSection: registry.command("train").model,
        flows.CleanSection: registry.command("clean").model,
    }
    for section, model in sections.items():
        assert set(section.model_fields) <= set(model.model_fields) | {"task_runner"}, section.__name__
        for name, field in section.model_fields.items():
            if name in model.model_fields and not field.is_required() and name != "texts":
                stage = model.model_fields[name]
                assert field.get_default(call_default_factory=True) == stage.get_default(call_default_factory=True)
                assert field.description == stage.description, (section.__name__, name)


def test_the_pipeline_checks_a_section_as_its_stage_does():
    from gpt2ja.flows.config import GenerateSection, TokenizerSection

    with pytest.raises(ValueError, match="vocab_size is required for sentencepiece"):
        TokenizerSection(kind="sentencepiece")
    with pytest.raises(ValueError, match="top_k"):
        GenerateSection(prompts=["a"], top_k=-1)


def test_a_web_crawl_is_bounded_by_default_and_an_aozora_crawl_is_not():
    assert CrawlConfig(source="web", start_urls=["http://x/"]).max_pages == 1000
    assert CrawlConfig(source="aozora", start_urls=["http://x/"]).max_pages == 0
    assert CrawlConfig(source="web", start_urls=["http://x/"], max_pages=0).max_pages == 0


def test_the_pipeline_primes_ppmd_as_the_cli_does():
    from gpt2ja.flows.config import EvaluateSection
    from gpt2ja.model.baselines import DEFAULT_PRIME_CHARS

    assert EvaluateSection().prime_chars == DEFAULT_PRIME_CHARS
    assert registry.command("eval").model.model_fields["prime_chars"].default == DEFAULT_PRIME_CHARS


def test_a_required_setting_missing_everywhere_names_its_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["shards", "--corpus", "c", "--tokenizer", "t", "--seq-len", "64"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: Missing option '--out' (or out in --config or --set)")


def test_tokenizer_and_shards_run_from_a_pipeline_config_with_set(tmp_path, capsys):
    """``gpt2ja tokenizer train`` and ``gpt2ja shards`` read a pipeline config's sections, ``--set`` on top."""
    pytest.importorskip("tensorflow")
    from tests.corpora import mirror_split, write_clean_corpus

    train, validation = mirror_split()
    corpus = write_clean_corpus(tmp_path / "clean", train[:6], validation[:2])
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tokenizer": {"kind": "sentencepiece", "vocab_size": 3000},
                "shards": {"seq_len": 128, "num_shards": {"train": 8, "validation": 2}, "workers": 1},
            }
        )
    )
    tok, shards = str(tmp_path / "tok"), str(tmp_path / "shards")
    main(["tokenizer", "train", "--config", str(config), "--corpus", corpus, "--out", tok, "--set", "kind=bytes",
          "--set", "vocab_size=257"])  # fmt: skip
    assert f"bytes tokenizer at {tok}: vocab size 257" in capsys.readouterr().out
    main(["shards", "--config", str(config), "--corpus", corpus, "--tokenizer", tok, "--out", shards,
          "--set", "num_shards.train=2", "--seq-len", "64"])  # fmt: skip
    printed = capsys.readouterr().out
    assert f"Shards at {shards}: train" in printed and "in 2 files" in printed and "(seq_len 64)" in printed
    manifest = json.loads((tmp_path / "shards" / "_MANIFEST.json").read_text())
    assert manifest["num_shards"] == {"train": 2, "validation": 2} and manifest["seq_len"] == 64


@pytest.mark.slow
def test_generate_runs_from_a_pipeline_config_with_set(tmp_path, capsys):
    """``gpt2ja generate --config`` samples with the pipeline's generate section, ``--set`` and flags on top."""
    pytest.importorskip("keras")
    from tests.corpora import write_tiny_run

    run = write_tiny_run(tmp_path)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"generate": {"prompts": ["吾輩は", "ある日"], "num": 3, "max_chars": 40}}))
    main(["generate", "--config", str(config), "--run", str(run), "--set", "num=2", "--max-chars", "5", "--greedy"])
    printed = capsys.readouterr().out
    assert printed.count("--- prompt '吾輩は'") == 2 and printed.count("--- prompt 'ある日'") == 2
    samples = [line for line in printed.splitlines() if not line.startswith("--- prompt")]
    assert len(samples) == 4 and all(len(s) <= len("ある日") + 5 for s in samples)
    assert samples[0] == samples[1]  # greedy: the same continuation each time


def test_the_stage_packages_never_import_the_registry_or_the_cli():
    """Imports go one way: the command line and the flows read the registry; the stages it lists do not."""
    import ast
    from pathlib import Path

    package = Path(registry.__file__).parent
    for folder in ("crawler", "corpus", "tokenization", "model", "studies", "infra"):
        for path in (package / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                for name in names:
                    assert not name.startswith(("gpt2ja.registry", "gpt2ja.cli")), (path, name)
                if isinstance(node, ast.ImportFrom) and node.module == "gpt2ja":
                    assert not {a.name for a in node.names} & {"registry", "cli"}, path

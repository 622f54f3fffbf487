"""Each setting's default lives in its config model: the command line's options agree with the models."""

from __future__ import annotations

import typer.main

from gpt2ja.cli import app
from gpt2ja.corpus.clean import CleanConfig
from gpt2ja.corpus.parquet import ParquetConfig
from gpt2ja.crawler.runner import CrawlConfig
from gpt2ja.model.generate import DEFAULT_SAMPLING
from gpt2ja.model.train import TrainConfig

MODELS = {
    ("crawl", "aozora"): CrawlConfig,
    ("crawl", "web"): CrawlConfig,
    ("clean",): CleanConfig,
    ("train",): TrainConfig,
    ("export", "parquet"): ParquetConfig,
}


def _command(path: tuple[str, ...]):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def test_cli_options_take_their_defaults_from_the_config_models():
    checked = 0
    for path, model in MODELS.items():
        for param in _command(path).params:
            if param.name in model.model_fields:
                default = model.model_fields[param.name].get_default(call_default_factory=True)
                # None hands the choice to the model; anything else must be the model's own value
                assert param.default is None or param.default == default, (path, param.name, param.default, default)
                checked += 1
    assert checked >= 15


def test_sampling_defaults_are_one_value_everywhere():
    for param in _command(("generate",)).params:
        if param.name in DEFAULT_SAMPLING:
            assert param.default == DEFAULT_SAMPLING[param.name], param.name
    import inspect

    from gpt2ja.model.generate import generate

    sig = inspect.signature(generate).parameters
    assert {k: sig[k].default for k in DEFAULT_SAMPLING} == DEFAULT_SAMPLING


def test_a_web_crawl_is_bounded_by_default_and_an_aozora_crawl_is_not():
    assert CrawlConfig(source="web", start_urls=["http://x/"]).max_pages == 1000
    assert CrawlConfig(source="aozora", start_urls=["http://x/"]).max_pages == 0
    assert CrawlConfig(source="web", start_urls=["http://x/"], max_pages=0).max_pages == 0


def test_the_pipeline_primes_ppmd_as_the_cli_does():
    from gpt2ja.flows.config import EvaluateSection
    from gpt2ja.model.baselines import DEFAULT_PRIME_CHARS

    assert EvaluateSection().prime_chars == DEFAULT_PRIME_CHARS

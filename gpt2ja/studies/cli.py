"""``gpt2ja study``: the two studies as commands (registered in :mod:`gpt2ja.cli`).

::

    gpt2ja study vocab --config configs/studies/vocab.yaml
    gpt2ja study sampling --run data/bulk/runs/tiny-sp8k --config configs/studies/sampling.yaml
    gpt2ja study recipe --config configs/studies/recipe.yaml

A bad config or a stage that refuses its input ends with one ``error: …``
line naming the file, field or artifact and the fix (exit status 2 for a
config, 1 for a stage).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Measure what the seed project guessed: vocabulary size (vocab), decoding methods "
    "against context length (sampling), and the best recipe for a CPU time budget (recipe). "
    "Each writes a report to docs/studies/.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _command(*parts: str) -> str:
    return " ".join(shlex.quote(p) for p in parts)


@app.command("vocab")
def vocab(
    config: Path = typer.Option(
        Path("configs/studies/vocab.yaml"),
        "--config",
        help="The study's YAML (tokenizers, model, budget, held-out author, paths).",
    ),
    out: Optional[str] = typer.Option(None, "--out", help="Report folder (overrides the config's `out`)."),
) -> None:
    """Train one model shape per tokenizer on the same characters; compare bits/char on validation and held-out text."""
    from gpt2ja.studies.common import StudyError, load_config
    from gpt2ja.studies.vocab import VocabStudyConfig, run_vocab_study

    try:
        cfg = load_config(config, VocabStudyConfig, {"out": out})
    except StudyError as err:
        _fail(str(err), 2)
    command = _command("gpt2ja", "study", "vocab", "--config", str(config), *(["--out", out] if out else []))
    try:
        written = run_vocab_study(cfg, command=command)
    except StudyError as err:
        _fail(str(err), 1)
    print(f"report: {written['markdown']} (plot {written['png']}, data {written['csv']})")


@app.command("sampling")
def sampling(
    run: str = typer.Option(..., "--run", help="A finished run directory (e.g. one of the vocab study's runs)."),
    config: Path = typer.Option(
        Path("configs/studies/sampling.yaml"),
        "--config",
        help="The study's YAML (texts, context lengths, methods, seeds).",
    ),
    out: Optional[str] = typer.Option(None, "--out", help="Report folder (overrides the config's `out`)."),
) -> None:
    """Decode validation prompts with greedy, sampling, top-k and top-p at several context lengths; compare to human."""
    from gpt2ja.studies.common import StudyError, load_config
    from gpt2ja.studies.sampling import SamplingStudyConfig, run_sampling_study

    try:
        cfg = load_config(config, SamplingStudyConfig, {"out": out})
    except StudyError as err:
        _fail(str(err), 2)
    command = _command(
        "gpt2ja", "study", "sampling", "--run", run, "--config", str(config), *(["--out", out] if out else [])
    )
    try:
        written = run_sampling_study(run, cfg, command=command)
    except StudyError as err:
        _fail(str(err), 1)
    print(f"report: {written['markdown']} (data {written['csv']})")


@app.command("recipe")
def recipe(
    config: Path = typer.Option(
        Path("configs/studies/recipe.yaml"),
        "--config",
        help="The study's YAML (tokenizers, candidates, time budget, held-out author).",
    ),
    budget_minutes: Optional[float] = typer.Option(
        None, "--budget-minutes", help="Training minutes per candidate (overrides the config's)."
    ),
    final_minutes: Optional[float] = typer.Option(
        None, "--final-minutes", help="Training minutes of the winner's final run (overrides the config's)."
    ),
    out: Optional[str] = typer.Option(None, "--out", help="Report folder (overrides the config's `out`)."),
) -> None:
    """Train every candidate recipe for the same time; compare bits/char on validation and a held-out author.

    The best one then trains once more for --final-minutes: the study's model.
    """
    from gpt2ja.studies.common import StudyError, load_config
    from gpt2ja.studies.recipe import RecipeStudyConfig, run_recipe_study

    try:
        cfg = load_config(
            config, RecipeStudyConfig, {"out": out, "budget_minutes": budget_minutes, "final_minutes": final_minutes}
        )
    except StudyError as err:
        _fail(str(err), 2)
    command = _command(
        "gpt2ja",
        "study",
        "recipe",
        "--config",
        str(config),
        *(["--budget-minutes", f"{budget_minutes:g}"] if budget_minutes else []),
        *(["--final-minutes", f"{final_minutes:g}"] if final_minutes else []),
        *(["--out", out] if out else []),
    )
    try:
        written = run_recipe_study(cfg, command=command)
    except StudyError as err:
        _fail(str(err), 1)
    print(f"report: {written['markdown']} (data {written['csv']})")

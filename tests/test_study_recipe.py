"""The recipe study: config errors in one line, and the whole study on the bundled mirror at a tiny budget.

End to end: files source → clean (新美南吉 held out) → a sentencepiece
tokenizer → shards at two sequence lengths → a calibration run per candidate
→ runs of the planned steps → evaluations with the PPMd baselines → report.
A rerun trains nothing and keeps the plan's steps.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from gpt2ja.studies.common import StudyError, load_config
from gpt2ja.studies.recipe import RecipeStudyConfig, verdict
from tests.corpora import mirror_texts

REPO = Path(__file__).resolve().parent.parent

BASE = {
    "root": "r",
    "source": "s",
    "corpus": "c",
    "holdout_author": "新美南吉",
    "budget_minutes": 1,
    "tokenizers": [{"name": "sp", "kind": "sentencepiece", "vocab_size": 1000}],
    "candidates": [
        {
            "name": "a",
            "preset": "tiny",
            "tokenizer": "sp",
            "seq_len": 32,
            "batch_tokens": 256,
            "micro_batch": 8,
            "learning_rate": 3e-3,
        }
    ],
}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"candidates": [{**BASE["candidates"][0], "tokenizer": "sp32k"}]},
            r"candidate a: tokenizer 'sp32k' is not one of the study's tokenizers \(sp\)",
        ),
        (
            {"candidates": [{**BASE["candidates"][0], "batch_tokens": 300}]},
            r"candidates\[0\]: candidate a: batch_tokens 300 is not a multiple of micro_batch × seq_len = 256; use 256",
        ),
        (
            {"candidates": [{**BASE["candidates"][0], "preset": "huge"}]},
            r"candidates\[0\]: candidate a: unknown preset",
        ),
        (
            {"candidates": [BASE["candidates"][0], BASE["candidates"][0]]},
            r"candidates: candidate names must be unique; repeated: a$",
        ),
        ({"train_options": {"learning_rate": 1}}, r"train_options learning_rate: not a TrainConfig field the study "),
        ({"budget_minutes": 0}, r"budget_minutes: must be more than 0"),
    ],
)
def test_recipe_config_errors_are_one_line(tmp_path, change, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**BASE, **change}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(StudyError, match=rf"^config {path}: {message}") as err:
        load_config(path, RecipeStudyConfig)
    assert "\n" not in str(err.value)


def test_the_shipped_recipe_config_loads():
    cfg = load_config(REPO / "configs" / "studies" / "recipe.yaml", RecipeStudyConfig)
    assert cfg.budget_minutes == 10 and cfg.final_minutes == 120 and cfg.holdout_author == "梶井基次郎"
    assert {c.preset for c in cfg.candidates} >= {"tiny", "micro", "mini"}


def test_training_clock_sums_each_records_steps_at_its_rate():
    """The minutes of the loss plot and the table's seconds come from one clock: each timed record's steps
    at its own tokens/s (records without a rate, e.g. validation ones, do not move it)."""
    from gpt2ja.studies.vocab import training_clock, training_speed

    metrics = [
        {"step": 10, "tokens_per_s": 100, "loss": 5.0},
        {"step": 10, "validation/loss": 4.5},
        {"step": 30, "tokens_per_s": 200, "loss": 4.0},
        {"step": 40, "tokens_per_s": 400},
    ]
    clock = training_clock(metrics, batch_tokens=10)
    assert [round(seconds, 9) for seconds, _ in clock] == [1.0, 2.0, 2.25]
    assert [m["step"] for _, m in clock] == [10, 30, 40]
    assert training_speed(metrics, 10) == (300.0, 2.25, None)  # median of the rates after the first
    assert training_speed([{"step": 1}], 10) == (None, None, None)


def test_the_verdict_needs_more_than_the_seed_spread():
    best = {"candidate": "m", "bpc_heldout": 5.0, "ppmd_heldout": 5.5, "ppmd_primed_heldout": 4.8}
    assert verdict(best, 0.1).startswith(
        "The best candidate, m, beats PPMd order 8 alone on the held-out author by 0.500 bits/char"
    )
    assert "+0.200 to go" in verdict(best, 0.1)
    assert verdict({**best, "bpc_heldout": 4.0}, 0.1).endswith(
        "It beats PPMd primed with training text (4.800) too, by 0.800."
    )
    assert "not a clear win" in verdict(best, 0.6)
    assert verdict({**best, "bpc_heldout": 5.7}, 0.1).startswith("No candidate beats PPMd order 8 alone")


@pytest.fixture(scope="module")
def recipe_study(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from gpt2ja.studies.recipe import run_recipe_study

    tmp = tmp_path_factory.mktemp("recipe-study")
    source = mirror_texts(tmp / "texts")
    cfg = RecipeStudyConfig(
        root=str(tmp / "root"),
        source=str(source),
        crawl_id="mirror",
        corpus=str(tmp / "root" / "clean" / "mirror"),
        holdout_author="新美南吉",
        validation_fraction=0.2,
        clean_workers=1,
        tokenizers=[{"name": "sp3k", "kind": "sentencepiece", "vocab_size": 3000}],
        tokenizer_sample_sentences=5000,
        tokenizer_threads=1,
        num_shards=2,
        candidates=[
            {
                "name": "tiny-32",
                "preset": "tiny",
                "tokenizer": "sp3k",
                "seq_len": 32,
                "batch_tokens": 256,
                "micro_batch": 8,
                "learning_rate": 3e-3,
            },
            {
                "name": "tiny-64",
                "preset": "tiny",
                "tokenizer": "sp3k",
                "seq_len": 64,
                "batch_tokens": 512,
                "micro_batch": 8,
                "learning_rate": 3e-3,
                "min_lr_ratio": 0.0,
            },
        ],
        budget_minutes=0.02,
        final_minutes=0.05,
        calibration_steps=4,
        seeds=[0],
        winner_seeds=[0, 1],
        checkpoints=2,
        log_every=5,
        eval_characters=1500,
        eval_chunk_chars=500,
        eval_batch_size=4,
        prime_chars=20_000,
        out=str(tmp / "docs"),
    )
    lines: list[str] = []
    written = run_recipe_study(cfg, command="gpt2ja study recipe --config tiny.yaml", say=lines.append)
    return cfg, written, lines


@pytest.mark.slow
def test_recipe_study_end_to_end(recipe_study):
    from gpt2ja.corpus.jsonl import read_documents
    from gpt2ja.infra import storage

    cfg, written, lines = recipe_study
    root = Path(cfg.root)
    with open(written["csv"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # every candidate with seed 0, then the best of them again with seed 1, then its final run with seed 0
    winner = min(rows[:2], key=lambda r: float(r["bpc_heldout"]))["candidate"]
    assert [(r["stage"], r["candidate"], r["seed"]) for r in rows] == [
        ("proxy", "tiny-32", "0"),
        ("proxy", "tiny-64", "0"),
        ("proxy", winner, "1"),
        ("final", winner, "0"),
    ]
    assert any(line == f"winner {winner}: seed 1" for line in lines)
    assert any(line.startswith(f"final {winner}: ") for line in lines)
    plans = {c.name: json.loads((root / "plan" / f"{c.name}.json").read_text()) for c in cfg.candidates}
    for row in rows:
        plan = plans[row["candidate"]]
        # steps are the budget (the final run's: final_minutes) at the calibration's speed
        minutes = cfg.final_minutes if row["stage"] == "final" else cfg.budget_minutes
        assert int(row["steps"]) == max(1, int(minutes * 60 * plan["tokens_per_s"] / int(row["batch_tokens"])))
        assert int(row["train_tokens"]) == int(row["steps"]) * int(row["batch_tokens"])
        assert 0 < float(row["bpc_validation"]) < 30 and 0 < float(row["bpc_heldout"]) < 30
        assert float(row["ppmd_heldout"]) > 0 and float(row["ppmd_primed_heldout"]) > 0
        assert row["command"].startswith(f"gpt2ja train --data {root}/shards/sp3k-{row['seq_len']} ")
        assert f"--steps {row['steps']} " in row["command"] and f"--set seed={row['seed']}" in row["command"]
    assert not (root / "calibration" / "tiny-32").exists()  # the calibration runs are removed once planned
    # the held-out author is in no training or tokenizer text
    assert not [d for d in read_documents(storage.join(cfg.corpus, "train")) if d.author == "新美南吉"]
    assert {d.author for d in read_documents(str(root / "eval-texts" / "heldout" / "validation"))} == {"新美南吉"}
    md = Path(written["markdown"]).read_text(encoding="utf-8")
    assert md.startswith("# Recipe study: the best model 0.05 minutes of CPU training buy")
    final = rows[-1]
    assert f"## The winner, {winner}, for 0.05 minutes" in md and f"```sh\n{final['command']}\n```" in md
    assert f"{winner}-final-s0" in final["run"] and (root / "runs" / f"{winner}-final-s0" / "_MANIFEST.json").exists()
    assert "## The ranking: every candidate for 0.02 minutes" in md
    assert "```sh\ngpt2ja study recipe --config tiny.yaml\n```" in md and "Machine: " in md
    assert "PPMd order 8" in md and "Noise: the largest difference between seeds of one candidate is" in md
    assert f"({winner}); differences smaller than that are not results" in md
    assert "![training loss against minutes of training](recipe-loss.png)" in md
    assert Path(written["png_loss"]).read_bytes().startswith(b"\x89PNG")

    # a rerun trains nothing, keeps the plan and writes the same report
    from gpt2ja.studies.recipe import run_recipe_study

    before = {k: Path(v).read_bytes() for k, v in written.items()}
    again: list[str] = []
    run_recipe_study(cfg, command="gpt2ja study recipe --config tiny.yaml", say=again.append)
    assert {k: Path(v).read_bytes() for k, v in written.items()} == before
    assert sum("nothing to do" in line for line in again) == 4
    assert not any(line.startswith("plan tiny") for line in again)

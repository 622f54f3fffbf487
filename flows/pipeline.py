"""``pipeline``: crawl → clean → tokenizer → shards → train → evaluate (+ samples) → export from one config.

Each stage is its own subflow (see :mod:`flows.stages`) and receives the URIs the
stages before it wrote. Every stage skips itself when its output manifest matches
its input fingerprint, so a rerun after a completed run skips everything, and
deleting one stage's output rebuilds that stage (and the stages after it only if
its new output differs). An interrupted stage resumes where its package resumes:
finished shards, the newest training checkpoint. ``train``, ``evaluate``,
``generate`` and ``export`` run when the config has their section.

Run without a server (Prefect's ephemeral mode)::

    gpt2ja run configs/demo.yaml            # or: python -m flows.pipeline configs/demo.yaml
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from flows import artifacts
from infra.errors import Gpt2jaError
from flows.config import PipelineConfig, load_config
from flows.refresh import clean_inputs
from flows.stages import (clean_flow, crawl_flow, evaluate_flow, export_flow, shards_flow, tokenizer_flow,
                          train_flow)

STAGES = ("crawl", "clean", "tokenizer", "shards", "train", "evaluate", "export")


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig) -> dict:
    """Run the configured stages in order; returns ``{stage: {"uri", "skipped"}}`` (``crawl``: one per crawl)."""
    out: dict = {}
    out["crawl"] = crawl_flow(config.root, config.crawl)
    # the corpus is cleaned from every finished crawl of each configured source, corpus-refresh's
    # crawls included, so that a pipeline run after a refresh keeps the refreshed documents
    inputs = clean_inputs(config) or [c["uri"] for c in out["crawl"]]
    out["clean"] = clean_flow(inputs, config.clean_uri, config.clean)
    out["tokenizer"] = tokenizer_flow(out["clean"]["uri"], config.tokenizer_uri, config.tokenizer)
    out["shards"] = shards_flow(out["clean"]["uri"], out["tokenizer"]["uri"], config.shards_uri, config.shards)
    if config.train is not None:
        out["train"] = train_flow(out["shards"]["uri"], config.run_uri, config.train)
    if config.evaluate is not None:
        out["evaluate"] = evaluate_flow(out["train"]["uri"], config.eval_texts, config.eval_uri, config.evaluate,
                                        config.generate)
    if config.export is not None:
        out["export"] = export_flow(out["train"]["uri"], config.export_uri, config.export)

    ran = [s for s in STAGES if s in out]
    skipped = [s for s in ran if all(r["skipped"] for r in (out[s] if s == "crawl" else [out[s]]))]
    get_run_logger().info("pipeline done; skipped (up to date): %s", ", ".join(skipped) or "none")
    artifacts.markdown(artifacts.key("pipeline", artifacts.name_of(config.root)),
                       "```text\n" + artifacts.summary(config, out).strip("\n") + "\n```\n",
                       f"pipeline summary for {config.root}")
    return out


def stage_results(outcome: dict) -> list[tuple[str, dict]]:
    """``[(stage, {"uri", "skipped"}), …]`` in pipeline order (one entry per crawl)."""
    return [(s, r) for s in STAGES if s in outcome for r in (outcome[s] if s == "crawl" else [outcome[s]])]


def cli_run(config_path: str) -> None:
    """Load ``config_path``, run :func:`pipeline` (ephemeral Prefect, no server needed) and print its summary.

    Its errors for people (:class:`infra.errors.Gpt2jaError`) reach the caller: the
    command line prints them as one line.
    """
    config = load_config(config_path)
    print(artifacts.summary(config, pipeline(config)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m flows.pipeline CONFIG.yaml")
    try:
        cli_run(sys.argv[1])
    except Gpt2jaError as err:
        raise SystemExit(f"error: {err}") from None

"""``pipeline``: crawl → clean → tokenizer → shards from one :class:`PipelineConfig`.

Each stage is its own subflow (see :mod:`flows.stages`) and receives the URIs the
stages before it wrote. Every stage skips itself when its output manifest matches
its input fingerprint, so a rerun after a completed run skips everything, and
deleting one stage's output rebuilds that stage (and the stages after it only if
its new output differs).

Run without a server (Prefect's ephemeral mode)::

    python -c "from flows.pipeline import cli_run; cli_run('configs/pipeline-demo.yaml')"
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from flows.config import ConfigError, PipelineConfig, load_config
from flows.stages import StageError, clean_flow, crawl_flow, shards_flow, tokenizer_flow

STAGES = ("crawl", "clean", "tokenizer", "shards")


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig) -> dict:
    """Run the data stages in order; returns ``{stage: {"uri", "skipped"}}`` (``crawl``: one per crawl)."""
    crawls = crawl_flow(config.root, config.crawl)
    clean = clean_flow([c["uri"] for c in crawls], config.clean_uri, config.clean)
    tokenizer = tokenizer_flow(clean["uri"], config.tokenizer_uri, config.tokenizer)
    shards = shards_flow(clean["uri"], tokenizer["uri"], config.shards_uri, config.shards)
    outcome = {"crawl": crawls, "clean": clean, "tokenizer": tokenizer, "shards": shards}
    skipped = [s for s in STAGES if all(r["skipped"] for r in (crawls if s == "crawl" else [outcome[s]]))]
    get_run_logger().info("pipeline done; skipped (up to date): %s", ", ".join(skipped) or "none")
    return outcome


def cli_run(config_path: str) -> None:
    """Load ``config_path``, run :func:`pipeline` (ephemeral Prefect, no server needed) and print the stage URIs."""
    try:
        config = load_config(config_path)
        outcome = pipeline(config)
    except (ConfigError, StageError) as err:
        raise SystemExit(f"error: {err}") from None
    for stage in STAGES:
        for r in outcome[stage] if stage == "crawl" else [outcome[stage]]:
            print(f"{stage:<10} {'skipped' if r['skipped'] else 'built  '}  {r['uri']}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m flows.pipeline CONFIG.yaml")
    cli_run(sys.argv[1])

"""``pipeline``: crawl → clean → tokenizer → shards → train → evaluate (+ samples) → export from one config.

Each stage is its own subflow (see :mod:`gpt2ja.flows.stages`) and receives the URIs the
stages before it wrote. Every stage skips itself when its output manifest matches
its input fingerprint, so a rerun after a completed run skips everything, and
deleting one stage's output rebuilds that stage (and the stages after it only if
its new output differs). An interrupted stage resumes where its package resumes:
finished shards, the newest training checkpoint. ``train``, ``evaluate``,
``generate`` and ``export`` run when the config has their section.

Run without a server (Prefect's ephemeral mode)::

    gpt2ja run configs/demo.yaml            # or: python -m gpt2ja.flows.pipeline configs/demo.yaml
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from gpt2ja.flows import artifacts
from gpt2ja.flows.config import PipelineConfig, load_config
from gpt2ja.flows.stages import STAGES, use_backend
from gpt2ja.infra.errors import Gpt2jaError


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig) -> dict:
    """Run the configured stages in order; returns ``{stage: {"uri", "skipped"}}`` (``crawl``: one per crawl).

    The run's Keras backend (``train.backend``) is chosen first, before any stage loads Keras: training,
    evaluation and export of one pipeline run on the same backend, in this process.
    """
    use_backend(config.train.backend if config.train is not None else None)
    out: dict = {}
    for stage in STAGES:  # each stage's outputs are named by the config, so its inputs are known before it runs
        if stage.enabled(config):
            out[stage.name] = stage.flow(**stage.parameters(config))
    results = stage_results(out)
    skipped = [s.name for s in STAGES if s.name in out and all(r["skipped"] for n, r in results if n == s.name)]
    get_run_logger().info("pipeline done; skipped (up to date): %s", ", ".join(skipped) or "none")
    artifacts.markdown(
        artifacts.key("pipeline", artifacts.name_of(config.root)),
        "```text\n" + artifacts.summary(config, out).strip("\n") + "\n```\n",
        f"pipeline summary for {config.root}",
    )
    return out


def stage_results(outcome: dict) -> list[tuple[str, dict]]:
    """``[(stage, {"uri", "skipped"}), …]`` in pipeline order (one entry per crawl)."""
    return [
        (s.name, r)
        for s in STAGES
        if s.name in outcome
        for r in (outcome[s.name] if isinstance(outcome[s.name], list) else [outcome[s.name]])
    ]


def cli_run(config_path: str) -> None:
    """Load ``config_path``, run :func:`pipeline` (ephemeral Prefect, no server needed) and print its summary.

    Its errors for people (:class:`gpt2ja.infra.errors.Gpt2jaError`) reach the caller: the
    command line prints them as one line.
    """
    config = load_config(config_path)
    print(artifacts.summary(config, pipeline(config)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m gpt2ja.flows.pipeline CONFIG.yaml")
    try:
        cli_run(sys.argv[1])
    except Gpt2jaError as err:
        raise SystemExit(f"error: {err}") from None

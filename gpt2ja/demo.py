"""``make demo``: the Prefect ``pipeline`` flow over the bundled Aozora Bunko slice, with ``configs/demo.yaml``.

The slice (``examples/aozora-mirror``, 48 works by four authors) is served on
127.0.0.1 by a real HTTP server and crawled by the real ``aozora`` spider, with
politeness delays off because the server is local (robots.txt still obeyed);
then clean → sentencepiece tokenizer → shards → a tiny GPT-2 → evaluation with
three samples → Hugging Face export, each stage a Prefect flow. Prefect runs in
its ephemeral mode (a temporary local API server, no setup). A second run finds
every stage's manifest up to date and skips them all.

Example::

    run_demo("data/demo")     # what `gpt2ja demo` does; prints progress, then the summary
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "demo.yaml"
MIRROR = REPO / "examples" / "aozora-mirror"

# Prefect in ephemeral mode, offline; TensorFlow and transformers less chatty. A value the user set wins.
ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry (no network here)
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # 20 s is short on two busy cores
    "PREFECT_LOGGING_LOG_PRINTS": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar in the export check
}


def demo_config(root: str):
    """``configs/demo.yaml`` with ``root`` and the bundled mirror's path from here (any working directory works)."""
    from gpt2ja.flows.config import ConfigError, validate_config
    from gpt2ja.infra.yamlconfig import read_yaml

    if not MIRROR.is_dir():
        raise ConfigError(f"the bundled mirror is missing at {MIRROR}; restore examples/ from git")
    data = read_yaml(CONFIG, ConfigError, example="configs/demo.yaml", label="demo config")
    try:
        data["root"] = root
        data["crawl"][0]["serve_mirror"] = _rel(MIRROR)
    except (KeyError, TypeError, IndexError) as err:
        raise ConfigError(f"{CONFIG} cannot be read as the demo config ({err}); restore it from git") from None
    return validate_config(data, str(CONFIG))


def run_demo(root: str = "data/demo") -> str:
    """Run the pipeline flow on the slice under ``root``; prints Prefect's progress, then the summary. The run URI."""
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    config = demo_config(root)
    started = time.monotonic()
    print(
        f"gpt2ja demo: the Prefect `pipeline` flow with {_rel(CONFIG)} (root {root}): crawl → clean → "
        "tokenizer → shards → train → evaluate + generate → export.\nPrefect runs in ephemeral mode: it starts "
        "a temporary local API server first (a few seconds).",
        flush=True,
    )

    from gpt2ja.flows.artifacts import summary
    from gpt2ja.flows.pipeline import pipeline, stage_results

    outcome = pipeline(config)
    print(summary(config, outcome))
    built = [s for s, r in stage_results(outcome) if not r["skipped"]]
    took = time.monotonic() - started
    print(
        f"\nDone in {took:.0f} s: "
        + (
            f"built {', '.join(dict.fromkeys(built))}; the other stages were up to date."
            if built
            else "every stage was up to date (skipped)."
        )
    )
    print(
        "Run it again and every stage is skipped; delete a stage's directory to rebuild it. "
        "Next: the same flows on a real corpus (README.md, 'A tour')."
    )
    return outcome["train"]["uri"]


def _rel(path: Path) -> str:
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)

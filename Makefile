# gpt2ja: a newcomer runs `make demo` and `make test`; both bootstrap .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Offline-friendly Prefect (no telemetry), quieter TensorFlow.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv lint test test-fast demo ui bench clean-venv

venv: $(STAMP)

# Reinstalled only when pyproject.toml changes (idempotent).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# ruff's lint and format check (pyproject.toml [tool.ruff]); `ruff format .` fixes the second.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole suite, slow tests included (what CI runs).
test: lint
	$(BIN)/python -m pytest

# The tests that take under a second each (unmarked; `slow` marks the rest): under a minute, for every edit.
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

demo: venv
	$(BIN)/python -m gpt2ja demo

# A Prefect server on http://127.0.0.1:4200 (started if none answers; SQLite) serving the demo's
# deployments: corpus-refresh on its cron, pipeline, train and one per stage. Ctrl-C stops both.
ui: venv
	$(BIN)/python -m gpt2ja serve configs/serve-demo.yaml

# Speed figures with the machine they ran on (see docs/speed.md); tokens_bench and
# model_bench need the aozora-bulk clean corpus / a shards artifact: see their docstrings.
bench: venv
	$(BIN)/python benchmarks/crawl_bench.py
	$(BIN)/python benchmarks/clean_bench.py --skip-10x

clean-venv:
	rm -rf $(VENV)

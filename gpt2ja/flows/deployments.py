"""The deployments ``gpt2ja serve`` (``make ui``) serves, and the local Prefect server it starts when none answers.

From one serve config (``configs/serve-demo.yaml``)::

    pipeline: configs/demo.yaml            # the settings every deployment runs with
    refresh: {cron: "0 4 * * 1", timezone: Asia/Tokyo}

it builds these deployments (``flow/deployment``), tagged ``gpt2ja`` and the pipeline file's stem:

    corpus-refresh/corpus-refresh   crawl what is new + clean (gpt2ja/flows/refresh.py), on the cron schedule
    pipeline/pipeline               every configured stage in order
    STAGE/STAGE                     one per stage flow found in gpt2ja/flows/stages.py (crawl, clean, tokenizer,
                                    shards, and train, evaluate, generate, export where they exist): a rerun
    train-vertex/train-vertex       the train stage as a Vertex AI custom job, one or more GPU hosts
                                    (gpt2ja/flows/vertex_job.py): the train form plus the job's hardware

Every deployment's default parameters are the ones the pipeline would pass for
this config; a stage the config has no section for (e.g. ``train``) gets the
URIs only, and the UI's form asks for its settings (pydantic models, so the form
has every field with its description and bounds).

The same deployments for a process or Docker work pool are in ``deploy/prefect.yaml``.

Example::

    serve_config, config = load_serve_config("configs/serve-demo.yaml")
    prefect.serve(*build_deployments(serve_config, config))
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from gpt2ja.flows.config import ConfigError, PipelineConfig, load_config
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.yamlconfig import read_yaml, validate

HOST = "127.0.0.1"
PORT = 4200
SERVER_START_S = 180  # `prefect server start` migrates its SQLite database first: slow on a busy 2-core machine


class ServeError(Gpt2jaError, RuntimeError):
    """The Prefect server cannot be reached or started (one line: what, where, what to do)."""


# ----------------------------------------------------------------- the serve config


class RefreshSchedule(BaseModel):
    """When ``corpus-refresh`` runs: a cron line in a time zone."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(description="five-field cron, e.g. '0 4 * * 1' (Mondays at 04:00)")
    timezone: str = Field("UTC", description="IANA time zone of the cron, e.g. Asia/Tokyo")
    active: bool = Field(True, description="false: the schedule is created paused")

    @model_validator(mode="after")
    def _valid_for_prefect(self) -> "RefreshSchedule":
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=self.cron, timezone=self.timezone)
        except ValidationError as err:
            raise ValueError(err.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return self


class ServeConfig(BaseModel):
    """What ``gpt2ja serve`` serves: the pipeline config the deployments run with, and the refresh schedule."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(description="the pipeline YAML (relative to the working directory)")
    refresh: RefreshSchedule

    @field_validator("pipeline")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not os.path.isfile(value):
            raise ValueError(f"{value} is not a file (paths are relative to the working directory)")
        return value


def load_serve_config(path: str) -> tuple[ServeConfig, PipelineConfig]:
    """Read a serve config and the pipeline config it names; any problem is one :class:`ConfigError` line."""
    data = read_yaml(path, ConfigError, example="configs/serve-demo.yaml", label="serve config")
    serve_config = validate(ServeConfig, data, path, ConfigError, expected="pipeline, refresh", label="serve config")
    return serve_config, load_config(serve_config.pipeline)


# ----------------------------------------------------------------- the deployments


def stage_flows() -> dict:
    """``{flow name: Flow}`` of every stage, in pipeline order (:data:`gpt2ja.flows.stages.STAGES`)."""
    from gpt2ja.flows.stages import STAGES

    return {s.name: s.flow for s in STAGES}


def stage_parameters(config: PipelineConfig) -> dict[str, dict]:
    """The parameters the pipeline passes each stage flow for ``config`` (None: the config does not say)."""
    from gpt2ja.flows.stages import STAGES

    return {s.name: s.parameters(config) for s in STAGES}


def vertex_parameters(config: PipelineConfig) -> dict:
    """``train-vertex``'s defaults: the train settings, and the URIs when the root is on gs:// (a job needs them there).

    The job's hardware (project, image, GPUs…) has no default: the UI's form asks for it.
    """
    from gpt2ja.infra import storage

    on_gcs = storage.is_gcs(config.root)
    return {
        "shards_uri": config.shards_uri if on_gcs else None,
        "run_uri": config.run_uri if on_gcs else None,
        "settings": config.train,
    }


def _jsonable(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def flow_defaults(flow, given: dict) -> dict:
    """The values of ``given`` the flow takes (by parameter name), as JSON; None values are left to the UI."""
    names = inspect.signature(flow.fn).parameters
    return {k: _jsonable(v) for k, v in given.items() if k in names and v is not None}


def validate_parameters(flow, parameters: dict) -> None:
    """Check deployment parameters against the flow's type hints; raise ValueError with one line if one is wrong."""
    hints = typing.get_type_hints(flow.fn)
    names = inspect.signature(flow.fn).parameters
    for key, value in parameters.items():
        if key not in names:
            raise ValueError(f"{flow.name}: no parameter {key!r}; it takes {', '.join(names)}")
        try:
            TypeAdapter(hints[key]).validate_python(value)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in (key, *first["loc"]))
            raise ValueError(f"{flow.name}: {where}: {first['msg'].removeprefix('Value error, ')}") from None


def build_deployments(serve_config: ServeConfig, config: PipelineConfig) -> list:
    """``corpus-refresh`` (scheduled), ``pipeline``, one per stage flow, ``train-vertex``; each named as its flow."""
    from prefect.schedules import Cron

    from gpt2ja.flows.pipeline import pipeline
    from gpt2ja.flows.refresh import corpus_refresh
    from gpt2ja.flows.vertex_job import train_vertex_flow

    tags = ["gpt2ja", Path(serve_config.pipeline).stem]
    whole = {"config": config.model_dump(mode="json")}
    refresh = serve_config.refresh
    given = {**stage_parameters(config), train_vertex_flow.name: vertex_parameters(config)}
    deployments = []
    for flow in [corpus_refresh, pipeline, *stage_flows().values(), train_vertex_flow]:
        parameters = whole if flow in (corpus_refresh, pipeline) else flow_defaults(flow, given.get(flow.name, {}))
        try:
            validate_parameters(flow, parameters)
        except ValueError as err:
            raise ConfigError(f"deployment {flow.name}: {err}") from None
        extra = {}
        if flow is corpus_refresh:  # two refreshes at once would share a crawl
            extra = {
                "concurrency_limit": 1,
                "schedules": [Cron(refresh.cron, timezone=refresh.timezone, active=refresh.active)],
            }
        deployments.append(flow.to_deployment(name=flow.name, tags=tags, parameters=parameters, **extra))
    return deployments


def describe(deployments: list) -> list[str]:
    """One line per deployment: name, entrypoint, schedule, the parameters it has defaults for."""
    lines = []
    for d in deployments:
        cron = ", ".join(f"cron '{s.schedule.cron}' {s.schedule.timezone}" for s in d.schedules or [])
        lines.append(
            f"{d.flow_name + '/' + d.name:<30} {d.entrypoint:<34} {cron or 'no schedule':<30} "
            f"defaults: {', '.join(d.parameters) or '-'}"
        )
    return lines


# ----------------------------------------------------------------- the Prefect server


def answers(api_url: str, timeout: float = 2.0) -> bool:
    """True when a Prefect API answers at ``api_url`` (``…/api``): its /health says true."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_log_path(port: int) -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / f"gpt2ja-server-{port}.log"


@contextlib.contextmanager
def prefect_api(port: int = PORT) -> Iterator[tuple[str, bool]]:
    """``(API URL, started here)``: a server is started on 127.0.0.1 when none answers, and stopped on exit.

    ``PREFECT_API_URL`` (environment or profile) wins when it answers; when it is set
    but silent, only a local address is started (on its port), never a stand-in for
    a remote server.
    """
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        if answers(configured):
            yield configured, False
            return
        parts = urllib.parse.urlsplit(configured)
        if parts.hostname not in (HOST, "localhost"):
            raise ServeError(
                f"PREFECT_API_URL={configured} does not answer; start that server, or unset "
                f"PREFECT_API_URL to have gpt2ja start one on {HOST}"
            )
        port = parts.port or port
    url = f"http://{HOST}:{port}/api"
    if answers(url):  # a `prefect server start` of the user's
        yield url, False
        return
    log_path = server_log_path(port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
    }
    env.pop("PREFECT_API_URL", None)
    with open(log_path, "ab") as log:
        # its own session: Ctrl-C reaches `serve` only, which then stops the server after the runner
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                HOST,
                "--port",
                str(port),
                "--analytics-off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        print(f"starting a Prefect server on {HOST}:{port} (SQLite; log: {log_path})", file=sys.stderr, flush=True)
        deadline = time.monotonic() + SERVER_START_S
        while not answers(url):
            if proc.poll() is not None:
                raise ServeError(
                    f"the Prefect server exited (code {proc.returncode}) before answering on port "
                    f"{port}: {_last_line(log_path)}; see {log_path}"
                )
            if time.monotonic() > deadline:
                raise ServeError(
                    f"the Prefect server did not answer on {url} within {SERVER_START_S} s; see {log_path}"
                )
            time.sleep(0.5)
        yield url, True
    finally:
        _stop(proc)


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cli_serve(config_path: str, port: int = PORT, check: bool = False) -> None:
    """``gpt2ja serve``: build the deployments, make sure a server answers, serve until Ctrl-C (then stop both)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    serve_config, config = load_serve_config(config_path)  # a ConfigError is printed by the command line
    deployments = build_deployments(serve_config, config)
    if check:
        print("\n".join(describe(deployments)))
        return

    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_api(port) as (url, started):  # a ServeError is printed by the command line
        print(
            f"Prefect UI: {url.removesuffix('/api')}/deployments "
            f"(Ctrl-C stops serving{' and the server' if started else ''})",
            file=sys.stderr,
            flush=True,
        )
        os.environ["PREFECT_API_URL"] = url  # the runner's flow-run processes inherit it
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                prefect.serve(*deployments)
            except KeyboardInterrupt:  # Ctrl-C is how serving ends: before the runner took it over, too
                pass
    print("stopped serving", file=sys.stderr)

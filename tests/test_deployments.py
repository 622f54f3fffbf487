"""Deployments, `gpt2ja serve`, deploy/prefect.yaml, the Dockerfile and the GPU / TPU job specs.

The deployments are built from configs/serve-demo.yaml and compared with what the
config says; deploy/prefect.yaml must hold the same ones. The job specs cannot run
here (no cloud account, no accelerator): their dry runs are rendered, real gcloud
checks their flags (it stops at "no active account" before any request), and the
gpt2ja command line they run is parsed by our CLI and validated as a TrainConfig.
One slow test runs `gpt2ja serve` for real: it starts its own Prefect server on a
free 127.0.0.1 port, serves, and stops both on Ctrl-C (SIGINT).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from gpt2ja.flows.deployments import (
    ServeError,
    build_deployments,
    load_serve_config,
    prefect_api,
    stage_flows,
    validate_parameters,
)
from tests import procs
from tests.net import free_port

REPO = Path(__file__).resolve().parent.parent
SERVE_DEMO = "configs/serve-demo.yaml"
DATA_STAGES = ("crawl", "clean", "tokenizer", "shards")


@pytest.fixture(scope="module")
def in_repo():
    """Config paths are relative to the working directory: the repository root, as for `make ui`."""
    before = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(before)


@pytest.fixture(scope="module")
def demo(in_repo):
    serve_config, config = load_serve_config(SERVE_DEMO)
    return serve_config, config, {d.name: d for d in build_deployments(serve_config, config)}


def _flow_of(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


# ----------------------------------------------------------------- the served deployments


@pytest.mark.slow
def test_the_deployments_are_the_refresh_the_pipeline_and_every_stage(demo):
    serve_config, config, deployments = demo
    stages = list(stage_flows())
    assert set(DATA_STAGES) <= set(stages)  # train, evaluate, ... too once gpt2ja/flows/stages.py has them
    assert list(deployments) == ["corpus-refresh", "pipeline", *stages, "train-vertex"]
    for name, d in deployments.items():
        assert d.flow_name == name and d.tags == ["gpt2ja", "demo"]
        flow = _flow_of(d.entrypoint)  # the entrypoint imports and names a real flow
        assert flow.name == name, d.entrypoint
        assert re.fullmatch(r"gpt2ja/flows/(refresh|pipeline|stages|vertex_job)\.py:\w+", d.entrypoint)


def test_only_the_refresh_is_scheduled_with_the_cron_of_the_config(demo):
    serve_config, _config, deployments = demo
    (schedule,) = deployments["corpus-refresh"].schedules
    assert (
        (schedule.schedule.cron, schedule.schedule.timezone, schedule.active)
        == (serve_config.refresh.cron, serve_config.refresh.timezone, True)
        == ("0 4 * * 1", "Asia/Tokyo", True)
    )
    assert deployments["corpus-refresh"].concurrency_limit == 1
    assert not any(d.schedules for name, d in deployments.items() if name != "corpus-refresh")


@pytest.mark.slow
def test_the_parameters_are_the_ones_the_pipeline_passes(demo):
    _serve_config, config, deployments = demo
    whole = config.model_dump(mode="json")
    assert deployments["corpus-refresh"].parameters == {"config": whole}
    assert deployments["pipeline"].parameters == {"config": whole}
    p = {name: d.parameters for name, d in deployments.items()}
    assert p["crawl"] == {"root": "data/demo", "crawl": whole["crawl"]}
    assert p["clean"]["inputs"][0] == "data/demo/raw/aozora/demo"  # then every refresh crawl, if any
    assert (p["clean"]["out"], p["clean"]["settings"]) == ("data/demo/clean/aozora-demo", whole["clean"])
    assert p["tokenizer"] == {
        "corpus_uri": config.clean_uri,
        "out": config.tokenizer_uri,
        "settings": whole["tokenizer"],
    }
    assert p["shards"] == {
        "corpus_uri": config.clean_uri,
        "tokenizer_uri": config.tokenizer_uri,
        "out": config.shards_uri,
        "settings": whole["shards"],
    }
    # Vertex AI: the train settings; the demo root is local, so the gs:// URIs and the job come from the Run form
    assert p["train-vertex"] == {"settings": whole["train"]}
    if "train" in p:  # the model stages, where gpt2ja/flows/stages.py has them
        assert p["train"] == {
            "shards_uri": config.shards_uri,
            "run_uri": "data/demo/runs/tiny-demo",
            "settings": whole["train"],
        }
        assert p["evaluate"] == {
            "run_uri": config.run_uri,
            "texts": ["data/demo/clean/aozora-demo/validation"],
            "out": config.eval_uri,
            "settings": whole["evaluate"],
            "sampling": whole["generate"],
        }
        assert p["export"] == {
            "run_uri": config.run_uri,
            "out": "data/demo/runs/tiny-demo/export/hf",
            "settings": whole["export"],
        }
    for name, d in deployments.items():
        validate_parameters(_flow_of(d.entrypoint), d.parameters)  # each one a valid input of its flow


def test_the_train_form_offers_the_backend():
    # the Run form of the train and pipeline deployments: a choice of tensorflow or jax, tensorflow by default
    from prefect.utilities.callables import parameter_schema

    from gpt2ja.flows.stages import train_flow

    schema = parameter_schema(train_flow).model_dump()
    field = (schema.get("definitions") or schema["$defs"])["TrainSection"]["properties"]["backend"]
    assert field["enum"] == ["tensorflow", "jax"] and field["default"] == "tensorflow"


# ----------------------------------------------------------------- deploy/prefect.yaml


@pytest.fixture(scope="module")
def prefect_yaml():
    return yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text(encoding="utf-8"))


def _validated(flow, parameters: dict) -> dict:
    """Parameters as the flow receives them (pydantic models dumped), so that sparse YAML compares with full dumps."""
    import typing

    from pydantic import TypeAdapter

    hints = typing.get_type_hints(flow.fn)
    return {
        k: TypeAdapter(hints[k]).dump_python(TypeAdapter(hints[k]).validate_python(v), mode="json")
        for k, v in parameters.items()
    }


@pytest.mark.slow
def test_prefect_yaml_holds_the_served_deployments_for_a_process_and_a_docker_pool(demo, prefect_yaml):
    serve_config, _config, deployments = demo
    listed = prefect_yaml["deployments"]
    process = {d["name"]: d for d in listed if d["work_pool"]["name"] == "gpt2ja-process"}
    docker = {d["name"]: d for d in listed if d["work_pool"]["name"] == "gpt2ja-docker"}
    assert len(process) + len(docker) == len(listed)
    # every flow the YAML names exists; every served deployment whose flow exists is in the YAML
    # (a stage flow added to gpt2ja/flows/stages.py later shows up here as missing from deploy/prefect.yaml)
    assert set(process) == set(deployments), "deploy/prefect.yaml and the served deployments differ"
    # train-vertex only launches and follows a cloud job: the process pool (the image has no gcp extra)
    assert set(docker) == {f"{name}-docker" for name in process if name != "train-vertex"}
    for name, served in deployments.items():
        for d in (process[name], *([docker[f"{name}-docker"]] if f"{name}-docker" in docker else [])):
            assert d["entrypoint"] == served.entrypoint
            flow = _flow_of(d["entrypoint"])
            assert flow.name == served.flow_name
            ours, theirs = _validated(flow, d.get("parameters") or {}), _validated(flow, served.parameters)
            if name == "clean":  # the YAML is static: after refreshes the served list has more crawls
                assert ours["inputs"] == theirs["inputs"][:1]
                ours.pop("inputs"), theirs.pop("inputs")
            assert ours == theirs, f"{d['name']}: parameters differ from the served deployment's"
            assert d.get("tags") == served.tags
    refresh = process["corpus-refresh"]["schedules"]
    assert [(s["cron"], s["timezone"], s["active"]) for s in refresh] == [
        (serve_config.refresh.cron, serve_config.refresh.timezone, True)
    ]
    assert [s["active"] for s in docker["corpus-refresh-docker"]["schedules"]] == [False]  # not twice
    assert all(not d.get("schedules") for n, d in process.items() if n != "corpus-refresh")
    pulls = {json.dumps(d["pull"]) for d in docker.values()}
    assert pulls == {
        json.dumps([{"prefect.deployments.steps.set_working_directory": {"directory": _dockerfile_workdir()}}])
    }
    assert {d["work_pool"]["job_variables"]["image"] for d in docker.values()} == {"gpt2ja:latest"}


# ----------------------------------------------------------------- gpt2ja serve: help, check, errors


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from gpt2ja.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if not isinstance(exc.code, int) and exc.code:
            print(exc.code, file=sys.stderr)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_serve_help_names_the_config_the_port_and_the_check(capsys):
    code, out, _err = _cli(["serve", "--help"], capsys)
    assert code == 0
    assert "configs/serve-demo.yaml" in out and "--port" in out and "--check" in out and "Ctrl-C" in out


def test_serve_check_lists_the_deployments_and_starts_nothing(in_repo, capsys):
    code, out, _err = _cli(["serve", "--check", SERVE_DEMO], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["corpus-refresh/corpus-refresh", "gpt2ja/flows/refresh.py:corpus_refresh", "cron"]
    assert "'0 4 * * 1' Asia/Tokyo" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == [f"{n}/{n}" for n in ["pipeline", *stage_flows(), "train-vertex"]]


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, "file not found; give a YAML file such as configs/serve-demo.yaml"),
        ("refresh: [unclosed", "not valid YAML at line 1"),
        ("- a list\n", "expected a mapping of settings (pipeline, refresh)"),
        ("pipeline: configs/demo.yaml\n", "refresh: required but missing"),
        ("pipeline: configs/demo.yaml\nrefresh: {cron: '0 4 * *'}\n", "refresh: Invalid cron string"),
        (
            "pipeline: configs/demo.yaml\nrefresh: {cron: '0 4 * * 1', timezone: Asia/Tokio}\n",
            "refresh: Invalid timezone",
        ),
        ("pipeline: configs/demo.yaml\nrefresh: {cron: '0 4 * * 1'}\nschedule: daily\n", "schedule: unknown setting"),
        ("pipeline: configs/nope.yaml\nrefresh: {cron: '0 4 * * 1'}\n", "pipeline: configs/nope.yaml is not a file"),
    ],
)
def test_a_bad_serve_config_gives_one_clear_line(in_repo, tmp_path, capsys, text, expected):
    path = tmp_path / "serve.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    code, out, err = _cli(["serve", "--check", str(path)], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"error: serve config {path}: ") and expected in err and err.count("\n") == 1, err


def test_a_bad_pipeline_config_is_named_by_its_own_file(in_repo, tmp_path, capsys):
    (tmp_path / "pipeline.yaml").write_text("root: x\n", encoding="utf-8")
    path = tmp_path / "serve.yaml"
    path.write_text(f"pipeline: {tmp_path / 'pipeline.yaml'}\nrefresh: {{cron: '0 4 * * 1'}}\n", encoding="utf-8")
    code, _out, err = _cli(["serve", "--check", str(path)], capsys)
    assert code == 1 and err.startswith(f"error: config {tmp_path / 'pipeline.yaml'}: ") and err.count("\n") == 1


def test_a_silent_api_url_elsewhere_is_named_not_replaced():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = "http://127.0.0.2:9/api"  # loopback, but not this machine's 127.0.0.1: refused at once
    with temporary_settings(updates={PREFECT_API_URL: url}), pytest.raises(ServeError) as err:
        with prefect_api():
            pass
    assert str(err.value).startswith(f"PREFECT_API_URL={url} does not answer; ") and "unset" in str(err.value)


# ----------------------------------------------------------------- the Dockerfile and the job specs


def _dockerfile() -> list[str]:
    return [
        ln.strip()
        for ln in (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]


def _dockerfile_workdir() -> str:
    return next(ln.split()[1] for ln in _dockerfile() if ln.startswith("WORKDIR "))


def _stages() -> dict[str, list[str]]:
    """The Dockerfile's lines by build stage (``FROM … AS name``), in order; the global ARGs under ``""``."""
    stages: dict[str, list[str]] = {"": []}
    for ln in _dockerfile():
        if ln.startswith("FROM "):
            stages[ln.split()[-1]] = []
        stages[list(stages)[-1]].append(ln)
    return stages


def test_the_dockerfile_builds_on_tensorflow_gpu_installs_the_project_and_runs_gpt2ja():
    import tomllib
    from importlib.metadata import version

    lines, stages = _dockerfile(), _stages()
    tf_arg = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("ARG TF_VERSION="))
    assert tf_arg == version("tensorflow")  # the image's TensorFlow is the one the tests run with
    assert list(stages)[-1] == "tensorflow"  # the last stage: what `docker build` builds without --target
    assert stages["tensorflow"][0] == "FROM tensorflow/tensorflow:${TF_VERSION}-gpu AS tensorflow"
    copied = [ln.split()[1] for ln in stages["sources"] if ln.startswith("COPY ")]
    assert all((REPO / c).exists() for c in copied), copied
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {p.rstrip("*") for p in packages["include"]} <= set(copied)  # every package the wheel holds
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    assert all(f"!{c}" in ignore or f"!{c}/" in ignore for c in copied)  # and the context lets them in
    for target in ("jax", "tensorflow"):  # both install what the sources stage holds, and run gpt2ja
        assert "COPY --from=sources /src/ ./" in stages[target]
        assert stages[target][-2:] == ['ENTRYPOINT ["gpt2ja"]', 'CMD ["--help"]']


def test_the_dockerfile_jax_target_is_cuda_13_jax_without_tensorflow():
    from importlib.metadata import version

    stages = _stages()
    jax = stages["jax"]
    assert "ARG JAX_VERSION=" + version("jax") in stages[""]  # the JAX the tests run with
    base = next(ln.split("=", 1)[1] for ln in stages[""] if ln.startswith("ARG JAX_BASE="))
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-base-ubuntu24\.04", base), base
    assert jax[0] == "FROM ${JAX_BASE} AS jax" and "ARG JAX_EXTRA=cuda13" in jax
    assert "KERAS_BACKEND=jax \\" in jax
    assert 'RUN bash deploy/jobs/install-jax.sh python "${JAX_EXTRA}" "${JAX_VERSION}" .' in jax
    assert not [ln for ln in jax if "tensorflow" in ln.lower()]


def test_the_jax_install_leaves_every_tensorflow_package_out():
    """install-jax.sh's requirement list, read from this checkout's installed metadata: TensorFlow-free."""
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "jobs" / "install-jax.sh"), "--requirements", sys.executable],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in out}
    assert not {n for n in names if n.startswith("tensorflow")} and "keras-hub" not in names
    assert {"tensorboard", "keras", "prefect", "sentencepiece", "tokenizers"} <= names  # gpt2ja's and keras-hub's
    assert not [r for r in out if "extra ==" in r]


def _dry_run(script: str, **env) -> tuple[list[str], list[list[str]]]:
    """(the gpt2ja command line, the commands) that ``script --dry-run`` prints."""
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "jobs" / script), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    ).stdout.splitlines()
    gpt2ja = [shlex.split(ln.removeprefix("gpt2ja>")) for ln in out if ln.startswith("gpt2ja>")]
    commands = [shlex.split(ln[2:]) for ln in out if ln.startswith("+ ")]
    assert len(gpt2ja) == 1 and commands, out
    return gpt2ja[0], commands


def _train_config(args: list[str]):
    """Parse ``args`` exactly as `gpt2ja` does (click), without running; then validate the TrainConfig it makes."""
    import typer

    from gpt2ja.cli import app
    from gpt2ja.model.train import TrainConfig

    group = typer.main.get_command(app)
    assert args[0] == "train"
    ctx = group.commands["train"].make_context("train", list(args[1:]))  # raises on a bad option or value
    given = {k: v for k, v in ctx.params.items() if v is not None and k in TrainConfig.model_fields}
    for item in ctx.params.get("sets") or []:  # --set key=value, values read as YAML (as gpt2ja does)
        key, value = item.split("=", 1)
        given[key] = yaml.safe_load(value)
    return TrainConfig.model_validate(given)


def test_the_gpu_vm_job_trains_mirrored_from_gs_in_the_image():
    args, commands = _dry_run("gpu-vm.sh", PROJECT="p1", BUCKET="b1")
    cfg = _train_config(args)
    assert (cfg.strategy, cfg.mixed_precision, cfg.jit_compile) == ("mirrored", "bf16", True)
    assert cfg.data.startswith("gs://b1/") and cfg.run.startswith("gs://b1/")
    (create,) = commands
    assert create[:4] == ["gcloud", "compute", "instances", "create"]
    metadata = create[create.index("--metadata") + 1]
    assert "install-nvidia-driver=True" in metadata and "gpt2ja-image=us-central1-docker.pkg.dev/p1/" in metadata
    files = dict(kv.split("=", 1) for kv in create[create.index("--metadata-from-file") + 1].split(","))
    assert Path(files["startup-script"]) == REPO / "deploy" / "jobs" / "gpu-vm-startup.sh"
    startup = files["startup-script"]
    assert "docker run --rm --gpus all" in Path(startup).read_text() and '"${ARGS[@]}"' in Path(startup).read_text()


def test_the_tpu_vm_job_sets_up_every_worker_and_trains_from_one_client():
    args, commands = _dry_run("tpu-vm.sh", PROJECT="p1", BUCKET="b1", TPU_TYPE="v4-32")
    cfg = _train_config(args)
    assert (cfg.strategy, cfg.mixed_precision, cfg.tpu) == ("tpu", "bf16", "gpt2ja-tpu")  # a slice: by its name
    assert cfg.data.startswith("gs://b1/") and cfg.run.startswith("gs://b1/")
    gcloud = [c for c in commands if c[0] == "gcloud"]
    assert [c[3:5] for c in gcloud] == [["tpu-vm", "create"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"]]
    assert gcloud[0][gcloud[0].index("--accelerator-type") + 1] == "v4-32"
    assert all("--worker=all" in c for c in gcloud[1:-1]) and "--worker=0" in gcloud[-1]
    train = shlex.split(gcloud[-1][gcloud[-1].index("--command") + 1])
    assert train[0] == "TPU_LOAD_LIBRARY=0"
    assert train[2].endswith("/gpt2ja-venv/bin/gpt2ja") and train[3:] == args  # what runs is what was checked
    one_host, _ = _dry_run("tpu-vm.sh", PROJECT="p1", BUCKET="b1", TPU_TYPE="v4-8")
    assert _train_config(one_host).tpu is None
    wheel = commands[0]
    assert wheel[1:4] == ["-m", "pip", "wheel"] and gcloud[1][5].endswith("gpt2ja-0.1.0-py3-none-any.whl")


def test_the_gpu_vm_job_with_backend_jax_runs_the_jax_image_on_a_cuda_13_driver():
    args, commands = _dry_run("gpu-vm.sh", PROJECT="p1", BUCKET="b1", BACKEND="jax")
    cfg = _train_config(args)
    assert (cfg.backend, cfg.strategy, cfg.mixed_precision) == ("jax", "default", "bf16")
    (create,) = commands
    assert create[create.index("--image-family") + 1].endswith("-nvidia-580")  # CUDA 13 needs driver >= 580
    assert (
        "gpt2ja-image=us-central1-docker.pkg.dev/p1/gpt2ja/gpt2ja-jax:latest" in create[create.index("--metadata") + 1]
    )


def test_the_tpu_vm_job_with_backend_jax_trains_on_every_worker():
    args, commands = _dry_run("tpu-vm.sh", PROJECT="p1", BUCKET="b1", TPU_TYPE="v6e-16", BACKEND="jax")
    cfg = _train_config(args)
    assert (cfg.backend, cfg.strategy, cfg.tpu, cfg.mixed_precision) == ("jax", "default", None, "bf16")
    gcloud = [c for c in commands if c[0] == "gcloud"]
    create, scp, setup, train = gcloud
    assert create[create.index("--version") + 1] == "v2-alpha-tpuv6e"
    assert [Path(f).name for f in scp[5:8]] == ["gpt2ja-0.1.0-py3-none-any.whl", "tpu-vm-setup.sh", "install-jax.sh"]
    assert setup[setup.index("--command") + 1].endswith("/gpt2ja-0.1.0-py3-none-any.whl jax")
    assert all("--worker=all" in c for c in (scp, setup, train))  # every host trains: one JAX process each
    command = shlex.split(train[train.index("--command") + 1])
    assert command[0] == "KERAS_BACKEND=jax" and "TPU_LOAD_LIBRARY=0" not in command
    assert command[1].endswith("/gpt2ja-venv/bin/gpt2ja") and command[2:] == args


def test_the_job_scripts_are_valid_bash():
    for script in sorted((REPO / "deploy" / "jobs").glob("*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_gcloud_accepts_every_flag_of_the_job_commands(tmp_path):
    """Real gcloud parses each command and stops at the missing account: flags are right, nothing is sent."""
    env = {
        **os.environ,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
    }
    env.pop("CLOUDSDK_CORE_ACCOUNT", None)
    routes = ({}, {"BACKEND": "jax", "TPU_TYPE": "v6e-16"})  # TensorFlow as before; JAX on a slice of v6e
    commands = [
        c
        for script in ("gpu-vm.sh", "tpu-vm.sh")
        for route in routes
        for c in _dry_run(script, DELETE_WHEN_DONE="true", **route)[1]
        if c[0] == "gcloud"
    ]
    assert len(commands) == 12
    for command in commands:
        if "--metadata-from-file" in command:  # the dry run's arguments file is gone: give one that exists
            i = command.index("--metadata-from-file") + 1
            command[i] = re.sub(r"gpt2ja-args=[^,]+", f"gpt2ja-args={REPO / 'README.md'}", command[i])
        got = procs.run(command, env=env)
        assert got.returncode != 0 and "You do not currently have an active account selected" in got.stderr, (
            f"{shlex.join(command)}\n{got.stderr}"
        )


# ----------------------------------------------------------------- gpt2ja serve, for real


def _api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        url + path, data=json.dumps(body or {}).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


@pytest.mark.slow
def test_serve_starts_a_server_serves_the_deployments_and_ctrl_c_stops_both(in_repo, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONUNBUFFERED": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpt2ja", "serve", SERVE_DEMO, "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # as a terminal
    expected = {"corpus-refresh", "pipeline", *stage_flows(), "train-vertex"}
    try:
        deployments = []
        while proc.poll() is None and len(deployments) < len(expected):
            time.sleep(2)
            with contextlib.suppress(OSError):
                deployments = _api(url, "/deployments/filter")
        assert proc.poll() is None, log.read_text()
        names = {d["name"]: d for d in deployments}
        assert set(names) == expected, log.read_text()
        (schedule,) = names["corpus-refresh"]["schedules"]
        assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == ("0 4 * * 1", "Asia/Tokyo")
        assert (tmp_path / "prefect" / f"gpt2ja-server-{port}.log").is_file()  # started here, in its SQLite home

        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait() == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert f"starting a Prefect server on 127.0.0.1:{port}" in text and text.rstrip().endswith("stopped serving")
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(url + "/health", timeout=3)


@pytest.mark.slow
def test_building_the_deployments_imports_no_heavy_library(in_repo):
    code = (
        "import sys; from gpt2ja.flows.deployments import load_serve_config, build_deployments; "
        f"build_deployments(*load_serve_config({SERVE_DEMO!r})); "
        "print(sorted(m for m in ('tensorflow', 'scrapy', 'fugashi', 'MeCab', 'torch', "
        "'google.cloud.aiplatform_v1') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

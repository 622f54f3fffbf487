"""gpt2ja/flows/vertex.py: Vertex AI custom jobs and Cloud TPU VM commands rendered from the train settings, offline.

Nothing here reaches Google Cloud: the requests are built with google-cloud-aiplatform's own
proto-plus types (a wrong field or enum raises), printed as the REST JSON, parsed back, and the
`gpt2ja train` line each replica runs is parsed by our CLI into the TrainConfig it must be.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from gpt2ja.flows import vertex
from gpt2ja.flows.config import TrainSection
from gpt2ja.flows.vertex import GpuJob, JobError, TpuVmJob
from tests import procs

REPO = Path(__file__).resolve().parents[1]
DATA = "gs://b1/gpt2ja/datasets/aozora-demo/sp3000-128"
RUN = "gs://b1/gpt2ja/runs/small"
IMAGE = "us-central1-docker.pkg.dev/p1/gpt2ja/gpt2ja:latest"
# what the UI's train form holds: a few settings changed, the rest defaults
SETTINGS = TrainSection(
    preset="small",
    steps=20_000,
    batch_tokens=524_288,
    micro_batch=64,
    learning_rate=6e-4,
    warmup_steps=500,
    mixed_precision="bf16",
    jit_compile=True,
    epsilon=1e-8,
    dropout=0.05,
)


@pytest.fixture
def v1():
    return pytest.importorskip("google.cloud.aiplatform_v1", reason="google-cloud-aiplatform (the gcp extra)")


def _as_gpt2ja_parses(args: list[str]):
    """The TrainConfig `gpt2ja train ARGS` builds: click parses the line, then the CLI's own settings merge."""
    import typer

    from gpt2ja.cli import _settings, app
    from gpt2ja.model.train import TrainConfig

    assert args[0] == "train"
    ctx = typer.main.get_command(app).commands["train"].make_context("train", list(args[1:]))
    params = dict(ctx.params)
    sets, config = params.pop("sets") or [], params.pop("config")
    assert config is None
    return _settings(TrainConfig, "train", None, sets, params)


def _expected(strategy: str):
    return SETTINGS.train_config(DATA, RUN).model_copy(update={"strategy": strategy})


# ----------------------------------------------------------------- Vertex AI


def test_one_gpu_is_one_pool_of_one_l4_machine_running_the_settings(v1):
    job = GpuJob(project="p1", image=IMAGE, gpus=1)
    request = vertex.custom_job_request(job, vertex.train_args(SETTINGS, DATA, RUN, job))

    assert isinstance(request, v1.CreateCustomJobRequest) and request.parent == "projects/p1/locations/us-central1"
    (pool,) = request.custom_job.job_spec.worker_pool_specs
    assert pool.replica_count == 1
    assert (
        pool.machine_spec.machine_type,
        pool.machine_spec.accelerator_type,
        pool.machine_spec.accelerator_count,
    ) == ("g2-standard-12", v1.AcceleratorType.NVIDIA_L4, 1)
    assert pool.container_spec.image_uri == IMAGE and list(pool.container_spec.command) == ["gpt2ja"]
    assert _as_gpt2ja_parses(list(pool.container_spec.args)) == _expected("default")
    assert not request.custom_job.job_spec.scheduling.restart_job_on_worker_restart


def test_eight_a100s_on_two_hosts_are_a_chief_pool_and_a_worker_pool_training_multi_worker(v1):
    job = GpuJob(project="p1", region="europe-west4", image=IMAGE, gpu_type="a100", gpus=8, replicas=2)
    request = vertex.custom_job_request(job, vertex.train_args(SETTINGS, DATA, RUN, job))

    chief, workers = (
        request.custom_job.job_spec.worker_pool_specs
    )  # Vertex AI: pool 0 → TF_CONFIG "chief", 1 → "worker"
    assert (chief.replica_count, workers.replica_count) == (1, 1)
    for pool in (chief, workers):
        assert (
            pool.machine_spec.machine_type,
            pool.machine_spec.accelerator_type,
            pool.machine_spec.accelerator_count,
        ) == ("a2-highgpu-8g", v1.AcceleratorType.NVIDIA_TESLA_A100, 8)
        assert _as_gpt2ja_parses(list(pool.container_spec.args)) == _expected("multi_worker")
    assert chief.container_spec == workers.container_spec
    assert request.custom_job.job_spec.scheduling.restart_job_on_worker_restart  # a lost host restarts all, from gs://
    assert request.parent == "projects/p1/locations/europe-west4"


def test_more_hosts_go_to_the_worker_pool(v1):
    job = GpuJob(project="p1", image=IMAGE, gpu_type="a100", gpus=8, replicas=4)
    request = vertex.custom_job_request(job, vertex.train_args(SETTINGS, DATA, RUN, job))
    assert [p.replica_count for p in request.custom_job.job_spec.worker_pool_specs] == [1, 3]


def test_the_request_is_the_library_s_own_type_and_round_trips_through_its_json(v1):
    job = GpuJob(
        project="p1", image=IMAGE, gpu_type="a100", gpus=8, replicas=2, service_account="t@p1.iam.gserviceaccount.com"
    )
    request = vertex.custom_job_request(job, vertex.train_args(SETTINGS, DATA, RUN, job))
    text = vertex.request_json(request)
    assert v1.CreateCustomJobRequest.from_json(text) == request
    body = json.loads(text)
    assert body["customJob"]["jobSpec"]["serviceAccount"] == "t@p1.iam.gserviceaccount.com"
    assert body["customJob"]["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["acceleratorType"] == "NVIDIA_TESLA_A100"


def test_the_library_types_refuse_wrong_fields_and_enums_offline(v1):
    # what makes building the request with them worth it: these fail here, not at the API
    with pytest.raises(ValueError):
        v1.MachineSpec(machine_typ="a2-highgpu-8g")
    with pytest.raises(KeyError):
        v1.AcceleratorType["NVIDIA_TESLA_A1000"]
    with pytest.raises(ValueError):
        v1.WorkerPoolSpec(replica_count="two")
    for kind in vertex.GPU_TYPES.values():  # every preset names a real enum value
        assert v1.AcceleratorType[kind.accelerator]


def test_dry_run_prints_the_request_as_json_with_the_machine_and_the_accelerator(v1, capsys):
    code = vertex.main(
        [
            "render",
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--root",
            "gs://b1/gpt2ja",
            "--project",
            "p1",
            "--image",
            IMAGE,
            "--gpus",
            "8",
            "--gpu-type",
            "a100",
            "--replicas",
            "2",
            "--dry-run",
        ]
    )
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    pools = body["customJob"]["jobSpec"]["workerPoolSpecs"]
    assert [p["machineSpec"] for p in pools] == 2 * [
        {"machineType": "a2-highgpu-8g", "acceleratorType": "NVIDIA_TESLA_A100", "acceleratorCount": 8}
    ]
    assert [int(p.get("replicaCount", 0)) for p in pools] == [1, 1]
    args = pools[0]["containerSpec"]["args"]
    cfg = _as_gpt2ja_parses(args)  # the demo config's train section, on gs://, multi_worker
    assert (cfg.data, cfg.run) == ("gs://b1/gpt2ja/datasets/aozora-demo/sp3000-128", "gs://b1/gpt2ja/runs/tiny-demo")
    assert (cfg.preset, cfg.steps, cfg.micro_batch, cfg.strategy) == ("tiny", 120, 16, "multi_worker")


def test_the_prefect_work_pool_variables_are_the_same_machine():
    job = GpuJob(project="p1", image=IMAGE, gpus=1)
    assert vertex.prefect_job_variables(job) == {
        "region": "us-central1",
        "image": IMAGE,
        "machine_type": "g2-standard-12",
        "accelerator_type": "NVIDIA_L4",
        "accelerator_count": 1,
        "boot_disk_size_gb": 200,
    }
    with pytest.raises(JobError, match="one replica per flow run"):
        vertex.prefect_job_variables(GpuJob(project="p1", image=IMAGE, gpu_type="a100", gpus=8, replicas=2))


@pytest.mark.parametrize(
    "change, job, expected",
    [
        (
            {"strategy": "tpu"},
            GpuJob(project="p", image="i", gpu_type="a100", gpus=8, replicas=2),
            "train strategy 'tpu' does not fit 2 host(s) × 8 A100: it needs 'multi_worker' "
            "(set strategy: multi_worker, or leave it default)",
        ),
        (
            {"micro_batch": 12},
            GpuJob(project="p", image="i", gpu_type="a100", gpus=8),
            "micro_batch 12 is not a multiple of the 8 devices of 1 host(s) × 8 A100 (it is summed over them); "
            "use micro_batch 16",
        ),
        (
            {"micro_batch": 6},
            TpuVmJob(project="p", tpu_type="v4-8"),
            "micro_batch 6 is not a multiple of the 4 devices of TPU v4-8 (it is summed over them); use micro_batch 8",
        ),
    ],
)
def test_settings_that_do_not_fit_the_hardware_are_one_clear_line(change, job, expected):
    settings = SETTINGS.model_copy(update=change)
    with pytest.raises(JobError) as err:
        vertex.train_args(settings, DATA, RUN, job)
    assert str(err.value) == expected


def test_one_gpu_keeps_a_mirrored_strategy_and_local_paths_are_refused():
    job = GpuJob(project="p", image="i", gpus=1)
    args = vertex.train_args(SETTINGS.model_copy(update={"strategy": "mirrored"}), DATA, RUN, job)
    assert args[args.index("--strategy") + 1] == "mirrored"
    with pytest.raises(JobError, match=r"^data data/demo/x is not on gs://"):
        vertex.train_args(SETTINGS, "data/demo/x", RUN, job)


def test_the_command_line_names_a_bad_choice_in_one_line(capsys):
    base = ["render", "--config", str(REPO / "configs" / "demo.yaml"), "--project", "p1", "--image", IMAGE]
    assert vertex.main([*base, "--root", "gs://b1/x", "--gpus", "3"]) == 2
    assert capsys.readouterr().err == "error: l4 machines have 1, 2, 4, 8 GPUs, not 3\n"
    assert vertex.main([*base, "--root", "data/local", "--gpus", "1", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: data data/local/datasets/aozora-demo/sp3000-128 is not on gs://")


# ----------------------------------------------------------------- Cloud TPU VM


def test_a_tpu_v4_8_is_one_host_with_the_tensorflow_pjrt_runtime_training_tpustrategy(capsys):
    assert (
        vertex.main(
            [
                "render",
                "--config",
                str(REPO / "configs" / "demo.yaml"),
                "--root",
                "gs://b1/gpt2ja",
                "--project",
                "p1",
                "--tpu",
                "v4-8",
            ]
        )
        == 0
    )
    commands = [shlex.split(ln[2:]) for ln in capsys.readouterr().out.splitlines()]
    gcloud = [c for c in commands if c[0] == "gcloud"]
    create = gcloud[0]
    assert create[3:5] == ["tpu-vm", "create"]
    assert create[create.index("--accelerator-type") + 1] == "v4-8"
    assert create[create.index("--version") + 1] == f"tpu-vm-tf-{vertex.TPU_TF_VERSION}-pjrt"
    assert all("--worker=all" in c for c in gcloud[1:-1])  # copy and set up on every worker
    assert "--worker=0" in gcloud[-1]  # one TensorFlow client trains
    train = shlex.split(gcloud[-1][gcloud[-1].index("--command") + 1])
    assert train[1].endswith("/gpt2ja-venv/bin/gpt2ja")
    cfg = _as_gpt2ja_parses(train[2:])
    assert (cfg.strategy, cfg.tpu, cfg.preset, cfg.run) == ("tpu", None, "tiny", "gs://b1/gpt2ja/runs/tiny-demo")


def test_a_slice_of_several_hosts_trains_from_one_client_that_names_the_tpu():
    job = TpuVmJob(project="p", tpu_type="v4-32", name="slice1")
    train_line = vertex.tpu_vm_commands(job, vertex.train_args(SETTINGS, DATA, RUN, job))[-1]
    assert "--worker=0" in train_line and "--worker=all" not in train_line
    command = shlex.split(train_line[train_line.index("--command") + 1])
    assert command[:2] == ["TPU_LOAD_LIBRARY=0", "TF_CPP_MIN_LOG_LEVEL=2"]
    cfg = _as_gpt2ja_parses(command[3:])
    assert (cfg.strategy, cfg.tpu) == ("tpu", "slice1")


def test_tpu_slices_past_one_host_use_the_pod_runtime_and_devices_follow_the_generation():
    assert TpuVmJob(project="p", tpu_type="v4-32").runtime_version == f"tpu-vm-tf-{vertex.TPU_TF_VERSION}-pod-pjrt"
    assert TpuVmJob(project="p", tpu_type="v5litepod-8").runtime_version.endswith(f"{vertex.TPU_TF_VERSION}-pjrt")
    assert [TpuVmJob(project="p", tpu_type=t).devices for t in ("v4-8", "v5p-8", "v5litepod-8", "v3-8")] == [4, 4, 8, 8]


def test_the_tpu_vm_script_defaults_to_the_same_runtime():
    text = (REPO / "deploy" / "jobs" / "tpu-vm.sh").read_text()
    assert f"TF_VERSION=${{TF_VERSION:-{vertex.TPU_TF_VERSION}}}" in text and "-pjrt" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
@pytest.mark.parametrize("backend, tpu_type", [("tensorflow", "v4-8"), ("jax", "v6e-16")])
def test_gcloud_accepts_the_rendered_tpu_vm_commands(tmp_path, backend, tpu_type):
    """Real gcloud parses each command and stops at the missing account: flags are right, nothing is sent."""
    env = {
        **os.environ,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
    }
    env.pop("CLOUDSDK_CORE_ACCOUNT", None)
    job = TpuVmJob(project="p1", tpu_type=tpu_type)
    settings = SETTINGS.model_copy(update={"backend": backend})
    commands = [c for c in vertex.tpu_vm_commands(job, vertex.train_args(settings, DATA, RUN, job)) if c[0] == "gcloud"]
    assert len(commands) == 4
    for command in commands:
        got = procs.run(command, env=env, cwd=REPO)
        assert got.returncode != 0 and "You do not currently have an active account selected" in got.stderr, (
            f"{shlex.join(command)}\n{got.stderr}"
        )


# ----------------------------------------------------------------- the JAX route (train.backend jax)

JAX_SETTINGS = SETTINGS.model_copy(update={"backend": "jax"})
JAX_IMAGE = "us-central1-docker.pkg.dev/p1/gpt2ja/gpt2ja-jax:latest"
# what Vertex AI sets on a replica of a job of two pools (https://cloud.google.com/vertex-ai/docs/training/distributed-training)
CLUSTER_SPEC = {
    "cluster": {
        "workerpool0": ["cmle-training-workerpool0-ab12-0:2222"],
        "workerpool1": ["cmle-training-workerpool1-ab12-0:2222", "cmle-training-workerpool1-ab12-1:2222"],
    },
    "environment": "cloud",
    "task": {"type": "workerpool1", "index": 1, "trial": ""},
    "job": "{}",
}


def _jax_expected():
    return JAX_SETTINGS.train_config(DATA, RUN)  # strategy stays default: TensorFlow's, unused by JAX


def _env(pool) -> dict[str, str]:
    return {e.name: e.value for e in pool.container_spec.env}


def test_the_jax_version_is_the_one_the_tests_run_with():
    from importlib.metadata import version

    assert vertex.JAX_VERSION == version("jax")
    assert f"JAX_VERSION=${{JAX_VERSION:-{vertex.JAX_VERSION}}}" in (REPO / "deploy" / "jobs" / "tpu-vm.sh").read_text()


def test_jax_on_one_gpu_host_is_one_pool_running_gpt2ja_with_the_jax_backend(v1):
    job = GpuJob(project="p1", image=JAX_IMAGE, gpu_type="a100", gpus=8)
    request = vertex.custom_job_request(job, vertex.train_args(JAX_SETTINGS, DATA, RUN, job))
    (pool,) = request.custom_job.job_spec.worker_pool_specs
    assert pool.container_spec.image_uri == JAX_IMAGE and list(pool.container_spec.command) == ["gpt2ja"]
    assert _env(pool) == {"KERAS_BACKEND": "jax"}  # one process: nothing for jax.distributed
    args = list(pool.container_spec.args)
    assert args[args.index("--backend") + 1] == "jax"
    assert _as_gpt2ja_parses(args) == _jax_expected()
    assert not request.custom_job.job_spec.scheduling.restart_job_on_worker_restart


def test_jax_on_several_gpu_hosts_renders_the_process_count_and_starts_through_the_launcher(v1):
    job = GpuJob(project="p1", image=JAX_IMAGE, gpu_type="h100", gpus=8, replicas=4)
    request = vertex.custom_job_request(job, vertex.train_args(JAX_SETTINGS, DATA, RUN, job))
    chief, workers = request.custom_job.job_spec.worker_pool_specs  # pool 0 = JAX process 0
    assert (chief.replica_count, workers.replica_count) == (1, 3)
    assert chief.container_spec == workers.container_spec
    assert list(chief.container_spec.command) == vertex.JAX_LAUNCH
    assert (
        vertex.JAX_LAUNCH[:4] == ["python", "-m", "gpt2ja.flows.vertex", "launch"] and vertex.JAX_LAUNCH[-1] == "gpt2ja"
    )
    assert _env(chief) == {"KERAS_BACKEND": "jax", "JAX_NUM_PROCESSES": "4"}
    assert _as_gpt2ja_parses(list(chief.container_spec.args)) == _jax_expected()
    assert request.custom_job.job_spec.scheduling.restart_job_on_worker_restart  # jax.distributed restarts whole
    assert v1.CreateCustomJobRequest.from_json(vertex.request_json(request)) == request


def test_the_tensorflow_request_is_what_it_was():
    job = GpuJob(project="p1", image=IMAGE, gpu_type="a100", gpus=8, replicas=2)
    args = vertex.train_args(SETTINGS, DATA, RUN, job)
    assert "--backend" not in args and vertex.backend_of(args) == "tensorflow"
    pool = vertex.custom_job_request(job, args).custom_job.job_spec.worker_pool_specs[1]
    assert list(pool.container_spec.command) == ["gpt2ja"] and _env(pool) == {"TF_CPP_MIN_LOG_LEVEL": "2"}


def test_the_launcher_numbers_the_processes_pool_by_pool_from_cluster_spec():
    got = vertex.jax_processes(json.dumps(CLUSTER_SPEC))
    assert got == {
        "JAX_COORDINATOR_ADDRESS": "cmle-training-workerpool0-ab12-0:2222",
        "JAX_NUM_PROCESSES": "3",
        "JAX_PROCESS_ID": "2",
    }
    chief = {**CLUSTER_SPEC, "task": {"type": "workerpool0", "index": 0}}
    assert vertex.jax_processes(json.dumps(chief))["JAX_PROCESS_ID"] == "0"
    env = vertex.launch(
        ["gpt2ja", "train"],
        {"CLUSTER_SPEC": json.dumps(CLUSTER_SPEC), "JAX_NUM_PROCESSES": "3", "KERAS_BACKEND": "jax"},
    )
    assert env == {"CLUSTER_SPEC": json.dumps(CLUSTER_SPEC), "KERAS_BACKEND": "jax", **got}
    with pytest.raises(JobError, match="rendered for JAX_NUM_PROCESSES=4 hosts but CLUSTER_SPEC lists 3"):
        vertex.launch(["gpt2ja"], {"CLUSTER_SPEC": json.dumps(CLUSTER_SPEC), "JAX_NUM_PROCESSES": "4"})
    with pytest.raises(JobError, match="^CLUSTER_SPEC is not set"):
        vertex.launch(["gpt2ja"], {})
    with pytest.raises(JobError, match="^CLUSTER_SPEC is not Vertex AI's cluster spec"):
        vertex.jax_processes('{"cluster": {}, "task": {"type": "workerpool1", "index": 0}}')


def test_the_launcher_runs_the_command_with_the_process_variables():
    """``python -m gpt2ja.flows.vertex launch -- CMD`` as the container runs it: CMD replaces it, variables set."""
    import sys

    show = "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('JAX_')}))"
    env = {**os.environ, "CLUSTER_SPEC": json.dumps(CLUSTER_SPEC), "JAX_NUM_PROCESSES": "3"}
    got = procs.run(
        [sys.executable, "-m", "gpt2ja.flows.vertex", "launch", "--", sys.executable, "-c", show], cwd=REPO, env=env
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == vertex.jax_processes(json.dumps(CLUSTER_SPEC))
    assert "JAX_PROCESS_ID=2" in got.stderr  # one line saying what it set
    env.pop("CLUSTER_SPEC")
    got = procs.run([sys.executable, "-m", "gpt2ja.flows.vertex", "launch", "--", "true"], cwd=REPO, env=env)
    assert got.returncode == 2 and got.stderr.startswith("error: CLUSTER_SPEC is not set")


@pytest.mark.parametrize(
    "tpu_type, chips, machine, topology",
    [
        ("v6e", 16, "ct6e-standard-4t", "4x4"),
        ("v6e", 8, "ct6e-standard-8t", "2x4"),
        ("v5e", 4, "ct5lp-hightpu-4t", "2x2"),
        ("v5e", 64, "ct5lp-hightpu-4t", "8x8"),
    ],
)
def test_a_vertex_tpu_slice_is_one_pool_of_its_machine_type_and_topology(v1, tpu_type, chips, machine, topology):
    job = vertex.VertexTpuJob(project="p1", image=JAX_IMAGE, tpu_type=tpu_type, chips=chips)
    request = vertex.custom_job_request(job, vertex.train_args(JAX_SETTINGS, DATA, RUN, job))
    (pool,) = request.custom_job.job_spec.worker_pool_specs  # one replica: JAX finds the slice's hosts itself
    assert pool.replica_count == 1
    assert (pool.machine_spec.machine_type, pool.machine_spec.tpu_topology) == (machine, topology)
    assert pool.machine_spec.accelerator_count == 0  # the machine type is the TPU
    assert list(pool.container_spec.command) == ["gpt2ja"] and _env(pool) == {"KERAS_BACKEND": "jax"}
    assert _as_gpt2ja_parses(list(pool.container_spec.args)) == _jax_expected()
    assert job.hosts == (1 if chips <= 8 else chips // 4)
    assert v1.CreateCustomJobRequest.from_json(vertex.request_json(request)) == request


def test_the_vertex_tpu_dry_run_prints_the_request(v1, capsys, tmp_path):
    import yaml

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["train"]["backend"] = "jax"
    path = tmp_path / "jax.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    code = vertex.main(
        [
            "render",
            "--config",
            str(path),
            "--root",
            "gs://b1/gpt2ja",
            "--project",
            "p1",
            "--image",
            JAX_IMAGE,
            "--vertex-tpu",
            "v6e",
            "--chips",
            "16",
            "--dry-run",
        ]
    )
    assert code == 0
    (pool,) = json.loads(capsys.readouterr().out)["customJob"]["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "ct6e-standard-4t", "tpuTopology": "4x4"}
    assert _as_gpt2ja_parses(pool["containerSpec"]["args"]).backend == "jax"


@pytest.mark.parametrize(
    "settings, job, expected",
    [
        (
            SETTINGS,
            vertex.VertexTpuJob(project="p", image="i", tpu_type="v5e", chips=8),
            "Vertex AI TPU v5e slice of 8 chip(s) trains with backend jax only (set backend: jax); TensorFlow on a "
            "TPU runs on a TPU VM (--tpu TYPE)",
        ),
        (
            JAX_SETTINGS.model_copy(update={"strategy": "multi_worker"}),
            GpuJob(project="p", image="i", gpus=1, replicas=2),
            "train strategy 'multi_worker' is TensorFlow's; backend jax trains on every device of 2 host(s) × 1 L4 "
            "without one (leave strategy default)",
        ),
        (
            JAX_SETTINGS.model_copy(update={"micro_batch": 8}),
            vertex.VertexTpuJob(project="p", image="i", chips=16),
            "micro_batch 8 is not a multiple of the 16 devices of Vertex AI TPU v6e slice of 16 chip(s) (it is summed "
            "over them); use micro_batch 16",
        ),
    ],
)
def test_jax_settings_that_do_not_fit_are_one_clear_line(settings, job, expected):
    with pytest.raises(JobError) as err:
        vertex.train_args(settings, DATA, RUN, job)
    assert str(err.value) == expected


def test_a_vertex_tpu_slice_has_a_documented_shape():
    with pytest.raises(ValueError, match="v5e slices have 1, 4, 8, 16, 32, 64, 128, 256 chips, not 12"):
        vertex.VertexTpuJob(project="p", image="i", tpu_type="v5e", chips=12)


def test_jax_on_a_tpu_vm_slice_sets_up_and_trains_on_every_worker():
    job = TpuVmJob(project="p", tpu_type="v6e-16", name="slice1")
    commands = vertex.tpu_vm_commands(job, vertex.train_args(JAX_SETTINGS, DATA, RUN, job))
    gcloud = [c for c in commands if c[0] == "gcloud"]
    create, scp, setup, train = gcloud
    assert create[create.index("--version") + 1] == "v2-alpha-tpuv6e"
    assert scp[5:8] == [
        "build/wheel/gpt2ja-0.1.0-py3-none-any.whl",
        "deploy/jobs/tpu-vm-setup.sh",
        "deploy/jobs/install-jax.sh",
    ]
    assert (
        setup[setup.index("--command") + 1] == f"bash ~/tpu-vm-setup.sh {vertex.JAX_VERSION} "
        "~/gpt2ja-0.1.0-py3-none-any.whl jax"
    )
    assert all("--worker=all" in c for c in (scp, setup, train)) and "--worker=0" not in train
    command = shlex.split(train[train.index("--command") + 1])
    assert command[:2] == ["KERAS_BACKEND=jax", "~/gpt2ja-venv/bin/gpt2ja"]  # no TPU_LOAD_LIBRARY, no tpu name
    cfg = _as_gpt2ja_parses(command[2:])
    assert (cfg.backend, cfg.strategy, cfg.tpu) == ("jax", "default", None) and cfg == _jax_expected()


@pytest.mark.parametrize(
    "tpu_type, runtime",
    [
        ("v6e-8", "v2-alpha-tpuv6e"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v4-32", "tpu-ubuntu2204-base"),
    ],
)
def test_the_jax_tpu_software_follows_the_generation_in_the_renderer_and_the_script(tpu_type, runtime):
    import subprocess

    assert TpuVmJob(project="p", tpu_type=tpu_type).jax_runtime_version == runtime
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "jobs" / "tpu-vm.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BACKEND": "jax", "TPU_TYPE": tpu_type},
    ).stdout
    create = next(shlex.split(ln[2:]) for ln in out.splitlines() if "tpu-vm create" in ln)
    assert create[create.index("--version") + 1] == runtime

"""infra/vertex.py: Vertex AI custom jobs and Cloud TPU VM commands rendered from the train settings, offline.

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

from flows.config import TrainSection
from infra import vertex
from infra.vertex import GpuJob, JobError, TpuVmJob
from tests import procs

REPO = Path(__file__).resolve().parents[1]
DATA = "gs://b1/gpt2ja/datasets/aozora-demo/sp3000-128"
RUN = "gs://b1/gpt2ja/runs/small"
IMAGE = "us-central1-docker.pkg.dev/p1/gpt2ja/gpt2ja:latest"
# what the UI's train form holds: a few settings changed, the rest defaults
SETTINGS = TrainSection(preset="small", steps=20_000, batch_tokens=524_288, micro_batch=64, learning_rate=6e-4,
                        warmup_steps=500, mixed_precision="bf16", jit_compile=True, epsilon=1e-8, dropout=0.05)


@pytest.fixture
def v1():
    return pytest.importorskip("google.cloud.aiplatform_v1", reason="google-cloud-aiplatform (the gcp extra)")


def _as_gpt2ja_parses(args: list[str]):
    """The TrainConfig `gpt2ja train ARGS` builds: click parses the line, then the CLI's own settings merge."""
    import typer

    from gpt2ja.cli import _settings, app
    from model.train import TrainConfig

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
    assert (pool.machine_spec.machine_type, pool.machine_spec.accelerator_type, pool.machine_spec.accelerator_count) \
        == ("g2-standard-12", v1.AcceleratorType.NVIDIA_L4, 1)
    assert pool.container_spec.image_uri == IMAGE and list(pool.container_spec.command) == ["gpt2ja"]
    assert _as_gpt2ja_parses(list(pool.container_spec.args)) == _expected("default")
    assert not request.custom_job.job_spec.scheduling.restart_job_on_worker_restart


def test_eight_a100s_on_two_hosts_are_a_chief_pool_and_a_worker_pool_training_multi_worker(v1):
    job = GpuJob(project="p1", region="europe-west4", image=IMAGE, gpu_type="a100", gpus=8, replicas=2)
    request = vertex.custom_job_request(job, vertex.train_args(SETTINGS, DATA, RUN, job))

    chief, workers = request.custom_job.job_spec.worker_pool_specs  # Vertex AI: pool 0 → TF_CONFIG "chief", 1 → "worker"
    assert (chief.replica_count, workers.replica_count) == (1, 1)
    for pool in (chief, workers):
        assert (pool.machine_spec.machine_type, pool.machine_spec.accelerator_type,
                pool.machine_spec.accelerator_count) == ("a2-highgpu-8g", v1.AcceleratorType.NVIDIA_TESLA_A100, 8)
        assert _as_gpt2ja_parses(list(pool.container_spec.args)) == _expected("multi_worker")
    assert chief.container_spec == workers.container_spec
    assert request.custom_job.job_spec.scheduling.restart_job_on_worker_restart  # a lost host restarts all, from gs://
    assert request.parent == "projects/p1/locations/europe-west4"


def test_more_hosts_go_to_the_worker_pool(v1):
    job = GpuJob(project="p1", image=IMAGE, gpu_type="a100", gpus=8, replicas=4)
    request = vertex.custom_job_request(job, vertex.train_args(SETTINGS, DATA, RUN, job))
    assert [p.replica_count for p in request.custom_job.job_spec.worker_pool_specs] == [1, 3]


def test_the_request_is_the_library_s_own_type_and_round_trips_through_its_json(v1):
    job = GpuJob(project="p1", image=IMAGE, gpu_type="a100", gpus=8, replicas=2, service_account="t@p1.iam.gserviceaccount.com")
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
    code = vertex.main(["render", "--config", str(REPO / "configs" / "demo.yaml"), "--root", "gs://b1/gpt2ja",
                        "--project", "p1", "--image", IMAGE, "--gpus", "8", "--gpu-type", "a100",
                        "--replicas", "2", "--dry-run"])
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    pools = body["customJob"]["jobSpec"]["workerPoolSpecs"]
    assert [p["machineSpec"] for p in pools] == 2 * [{"machineType": "a2-highgpu-8g",
                                                     "acceleratorType": "NVIDIA_TESLA_A100", "acceleratorCount": 8}]
    assert [int(p.get("replicaCount", 0)) for p in pools] == [1, 1]
    args = pools[0]["containerSpec"]["args"]
    cfg = _as_gpt2ja_parses(args)  # the demo config's train section, on gs://, multi_worker
    assert (cfg.data, cfg.run) == ("gs://b1/gpt2ja/datasets/aozora-demo/sp3000-128", "gs://b1/gpt2ja/runs/tiny-demo")
    assert (cfg.preset, cfg.steps, cfg.micro_batch, cfg.strategy) == ("tiny", 120, 16, "multi_worker")


def test_the_prefect_work_pool_variables_are_the_same_machine():
    job = GpuJob(project="p1", image=IMAGE, gpus=1)
    assert vertex.prefect_job_variables(job) == {
        "region": "us-central1", "image": IMAGE, "machine_type": "g2-standard-12", "accelerator_type": "NVIDIA_L4",
        "accelerator_count": 1, "boot_disk_size_gb": 200}
    with pytest.raises(JobError, match="one replica per flow run"):
        vertex.prefect_job_variables(GpuJob(project="p1", image=IMAGE, gpu_type="a100", gpus=8, replicas=2))


@pytest.mark.parametrize("change, job, expected", [
    ({"strategy": "tpu"}, GpuJob(project="p", image="i", gpu_type="a100", gpus=8, replicas=2),
     "train strategy 'tpu' does not fit 2 host(s) × 8 A100: it needs 'multi_worker' "
     "(set strategy: multi_worker, or leave it default)"),
    ({"micro_batch": 12}, GpuJob(project="p", image="i", gpu_type="a100", gpus=8),
     "micro_batch 12 is not a multiple of the 8 devices of 1 host(s) × 8 A100 (it is summed over them); "
     "use micro_batch 16"),
    ({"micro_batch": 6}, TpuVmJob(project="p", tpu_type="v4-8"),
     "micro_batch 6 is not a multiple of the 4 devices of TPU v4-8 (it is summed over them); use micro_batch 8"),
])
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
    assert vertex.main(["render", "--config", str(REPO / "configs" / "demo.yaml"), "--root", "gs://b1/gpt2ja",
                        "--project", "p1", "--tpu", "v4-8"]) == 0
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
    text = (REPO / "infra" / "jobs" / "tpu-vm.sh").read_text()
    assert f"TF_VERSION=${{TF_VERSION:-{vertex.TPU_TF_VERSION}}}" in text and "-pjrt" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_gcloud_accepts_the_rendered_tpu_vm_commands(tmp_path):
    """Real gcloud parses each command and stops at the missing account: flags are right, nothing is sent."""
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
           "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
           "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true"}
    env.pop("CLOUDSDK_CORE_ACCOUNT", None)
    job = TpuVmJob(project="p1", tpu_type="v4-8")
    commands = [c for c in vertex.tpu_vm_commands(job, vertex.train_args(SETTINGS, DATA, RUN, job))
                if c[0] == "gcloud"]
    assert len(commands) == 4
    for command in commands:
        got = procs.run(command, env=env, cwd=REPO)
        assert got.returncode != 0 and "You do not currently have an active account selected" in got.stderr, \
            f"{shlex.join(command)}\n{got.stderr}"

"""The ``train-vertex`` flow against a local stand-in of Vertex AI whose jobs really run.

Real parts: Prefect's test server (and, for the cancel, a deployment served by
``prefect.serve`` as ``gpt2ja serve`` serves them), the GCS emulator (shards and run in
the bucket), google-cloud-aiplatform's ``JobServiceClient`` over HTTP (REST transport,
as in production), and the replicas: ``gpt2ja train`` processes of this checkout with
the ``TF_CONFIG`` Vertex AI documents (``chief`` + ``worker``), training ``multi_worker``
together. Stand-in: the API server itself (``tests/vertex_server.py``), which runs
every replica as a local process instead of a container on a GPU VM. Google Cloud
itself never runs here. Slow (TensorFlow replicas, a served deployment, gcloud): about
40 s together; the others about 20 s, most of it Prefect's test server and the shards.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gpt2ja.flows import vertex
from gpt2ja.flows.config import TrainSection
from gpt2ja.flows.vertex import GpuJob
from gpt2ja.infra import storage, vertex_watch
from tests import procs
from tests.vertex_server import VertexServer

REPO = Path(__file__).resolve().parent.parent
v1 = pytest.importorskip("google.cloud.aiplatform_v1", reason="google-cloud-aiplatform (the gcp extra)")

SEQ_LEN = 32
TEXT = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
IMAGE = "us-central1-docker.pkg.dev/p1/gpt2ja/gpt2ja:latest"
TWO_HOSTS = GpuJob(project="p1", image=IMAGE, gpus=1, replicas=2)
SETTINGS = TrainSection(
    preset="tiny",
    steps=4,
    batch_tokens=8 * SEQ_LEN,
    micro_batch=8,
    learning_rate=3e-3,
    warmup_steps=1,
    checkpoint_every=4,
    eval_batches=0,
    log_every=1,
)
# what the image's `gpt2ja` entry point is here: this checkout's console script
GPT2JA = Path(sys.executable).with_name("gpt2ja")
ENTRYPOINTS = {"gpt2ja": [str(GPT2JA)] if GPT2JA.exists() else [sys.executable, "-m", "gpt2ja"]}
# a replica that runs until killed (or until the stand-in's process is gone: its stdin closes)
HOLD = {"gpt2ja": [sys.executable, "-c", "import sys; sys.stdin.read()"]}


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=procs.STARTUP_LIMIT_S):
        yield


@pytest.fixture(scope="module")
def bucket(gcs_emulator, tmp_path_factory) -> str:
    """A root on the emulator holding tiny bytes-tokenizer shards (seq_len 32) with their corpus and tokenizer."""
    from gpt2ja.corpus.document import Document
    from gpt2ja.corpus.jsonl import ShardWriter
    from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer
    from gpt2ja.tokenization.shards import ShardsConfig, write_shards

    local = tmp_path_factory.mktemp("vertex-data")
    corpus = str(local / "clean")
    for split, n in (("train", 40), ("validation", 6)):
        with ShardWriter(storage.join(corpus, split)) as out:
            for i in range(n):
                out.write(Document.new(source="test", url=f"{split}/{i}", text=TEXT * 2))
    files = [storage.file_info(u, root=corpus) for u in storage.list_files(corpus)]
    storage.write_manifest(
        corpus, storage.build_manifest(stage="clean", config={"test": "vertex"}, counts={}, files=files, timings={})
    )
    tok = ByteTokenizer().save(str(local / "tokenizer"))
    write_shards(
        corpus,
        tok,
        str(local / "shards"),
        ShardsConfig(seq_len=SEQ_LEN, num_shards={"train": 2, "validation": 1}, workers=1),
    )
    root = f"gs://{gcs_emulator.bucket}/vertex-{uuid.uuid4().hex[:8]}"
    for name in ("clean", "tokenizer", "shards"):  # manifests name their inputs relative to the root
        storage.upload_dir(str(local / name), storage.join(root, name))
    return root


@pytest.fixture
def stand_in(request, gcs_emulator, tmp_path, monkeypatch):
    """start(entrypoints) → a VertexServer the real client reaches (GPT2JA_VERTEX_API_ENDPOINT); stopped after."""
    servers = []

    def start(entrypoints=ENTRYPOINTS) -> VertexServer:
        # the replicas inherit this environment: STORAGE_EMULATOR_HOST reaches the emulator
        server = VertexServer(entrypoints, log_dir=tmp_path / f"replicas-{len(servers)}").__enter__()
        servers.append(server)
        monkeypatch.setenv(vertex.ENDPOINT_ENV, server.url)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)  # kills every replica's process group


def _creates(server: VertexServer) -> list[dict]:
    return [body for method, path, body in server.requests if method == "POST" and path.endswith("/customJobs")]


def _logs(job) -> str:
    return "\n".join(f"--- {r.name} ({r.task_type})\n{r.log_text()[-3000:]}" for r in job.replicas)


def _versions(artifact_key: str) -> list:
    """Every version of an artifact, oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key])), sort=ArtifactSort.CREATED_DESC
        )[::-1]


def _request_in(artifact) -> dict:
    return json.loads(re.search(r"```json\n(.*)\n```", artifact.data, re.S).group(1))


# ----------------------------------------------------------------- the flow, end to end


@pytest.mark.slow
def test_two_hosts_train_as_chief_and_worker_and_the_flow_checks_the_run(prefect_harness, bucket, stand_in):
    from gpt2ja.flows.vertex_job import train_vertex_flow

    server = stand_in()
    shards, run = storage.join(bucket, "shards"), storage.join(bucket, "runs", "two-hosts")
    state = train_vertex_flow(shards, run, SETTINGS, TWO_HOSTS, poll_seconds=0.2, return_state=True)
    (job,) = server.jobs.values()
    assert state.is_completed(), f"{state.message}\n{_logs(job)}"
    assert state.result() == {"uri": run, "job": job.body["name"], "complete": True, "dry_run": False}

    # one job, as sent: the chief's pool (1 replica) + the worker pool (1), each running `gpt2ja train` multi_worker
    (sent,) = _creates(server)
    sent = v1.CustomJob.from_json(json.dumps(sent))
    assert [p.replica_count for p in sent.job_spec.worker_pool_specs] == [1, 1]
    args = list(sent.job_spec.worker_pool_specs[0].container_spec.args)
    assert args[:5] == ["train", "--data", shards, "--run", run] and "multi_worker" in args

    # both replicas ran with Vertex AI's TF_CONFIG, trained every step together, and exited 0
    assert job.state == "JOB_STATE_SUCCEEDED"
    assert [(r.task_type, r.tf_config["task"]["index"], r.proc.returncode) for r in job.replicas] == [
        ("chief", 0, 0),
        ("worker", 0, 0),
    ]
    assert set(job.replicas[0].tf_config["cluster"]) == {"chief", "worker"}
    for r in job.replicas:
        assert "on 2 replica(s), strategy multi_worker" in r.log_text() and "step 4/4" in r.log_text(), _logs(job)

    # the run is complete in the bucket, written by the chief
    manifest = storage.read_manifest(run)
    assert (manifest["stage"], manifest["counts"]["steps"]) == ("train", 4)
    assert json.loads(storage.read_text(storage.join(run, "hparams.json")))["train"]["strategy"] == "multi_worker"

    # the UI: the exact request, the job's states, the run's progress and loss table
    (request,) = _versions("train-vertex-two-hosts-request")
    assert v1.CreateCustomJobRequest.from_json(json.dumps(_request_in(request))).custom_job == sent
    assert _request_in(request)["parent"] == "projects/p1/locations/us-central1"
    jobs = _versions("train-vertex-two-hosts-job")
    assert "JOB_STATE_RUNNING" in jobs[-1].data and jobs[-1].data.count("JOB_STATE_SUCCEEDED") == 2  # title, row
    assert job.body["name"] in jobs[-1].data and "gcloud ai custom-jobs stream-logs" in jobs[-1].data
    assert _versions("train-two-hosts-progress")[-1].data == 100.0
    assert [row["step"] for row in json.loads(_versions("train-two-hosts")[-1].data)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_failing_replica_fails_the_job_and_the_flow_in_one_line(prefect_harness, bucket, stand_in):
    """batch_tokens 100 is no multiple of micro_batch × seq_len: found by each replica (before TensorFlow)."""
    from gpt2ja.flows.vertex_job import train_vertex_flow
    from gpt2ja.infra.stage import StageError

    server = stand_in()
    run = storage.join(bucket, "runs", "bad-batch")
    with pytest.raises(StageError) as failed:
        train_vertex_flow(
            storage.join(bucket, "shards"),
            run,
            SETTINGS.model_copy(update={"batch_tokens": 100}),
            TWO_HOSTS,
            poll_seconds=0.2,
        )
    (job,) = server.jobs.values()
    name = job.body["name"]
    line = str(failed.value)
    assert "\n" not in line
    assert re.match(
        rf"train-vertex: Vertex AI job {name} \(gpt2ja-train\) ended JOB_STATE_FAILED: The replica "
        r"workerpool[01]-0 exited with a non-zero status of 1\. ",
        line,
    ), line
    assert line.endswith(
        f"its logs: `gcloud ai custom-jobs stream-logs {name.rsplit('/', 1)[1]} --region us-central1 "
        f"--project p1` or {vertex_watch.console_url(name)}"
    )
    assert job.state == "JOB_STATE_FAILED" and all(r.proc.returncode != 0 for r in job.replicas)
    assert any(
        "batch_tokens 100 is not a multiple of micro_batch × seq_len = 8 × 32 = 256" in r.log_text()
        for r in job.replicas
    ), _logs(job)
    assert storage.read_manifest(run) is None
    assert "JOB_STATE_FAILED" in _versions("train-vertex-bad-batch-job")[-1].data


@pytest.mark.slow
def test_a_dry_run_renders_the_request_and_creates_nothing(prefect_harness, stand_in):
    from gpt2ja.flows.vertex_job import train_vertex_flow

    server = stand_in()
    job = GpuJob(project="p1", region="europe-west4", image=IMAGE, gpu_type="a100", gpus=8, replicas=3)
    settings = SETTINGS.model_copy(update={"micro_batch": 24})  # a multiple of the 24 GPUs
    out = train_vertex_flow("gs://nowhere/datasets/x/y", "gs://nowhere/runs/dry", settings, job, dry_run=True)
    assert out == {"uri": "gs://nowhere/runs/dry", "job": None, "dry_run": True}
    assert server.requests == [] and server.jobs == {}
    (artifact,) = _versions("train-vertex-dry-request")
    body = _request_in(artifact)
    expected = vertex.custom_job_request(
        job, vertex.train_args(settings, "gs://nowhere/datasets/x/y", "gs://nowhere/runs/dry", job)
    )
    assert v1.CreateCustomJobRequest.from_json(json.dumps(body)) == expected
    assert [int(p["replicaCount"]) for p in body["customJob"]["jobSpec"]["workerPoolSpecs"]] == [1, 2]
    assert "dry run: rendered only, nothing created" in artifact.data


@pytest.mark.slow
def test_missing_shards_are_refused_before_a_job_is_created(prefect_harness, bucket, stand_in):
    from gpt2ja.flows.vertex_job import train_vertex_flow
    from gpt2ja.infra.stage import StageError

    server = stand_in()
    missing = storage.join(bucket, "datasets", "none")
    with pytest.raises(StageError, match=rf"^train-vertex: shards {re.escape(missing)} has no _MANIFEST.json"):
        train_vertex_flow(missing, storage.join(bucket, "runs", "none"), SETTINGS, TWO_HOSTS)
    assert server.requests == []


# ----------------------------------------------------------------- following a job (no Prefect)


def test_an_interrupted_follow_cancels_the_job_and_its_replicas_stop(stand_in):
    server = stand_in(HOLD)
    client = vertex.job_client("us-central1")
    request = vertex.custom_job_request(TWO_HOSTS, ["train"])
    created = vertex_watch.create(client, request)
    states, said = [], []

    def interrupt_once_running(seconds: float) -> None:  # Ctrl-C while the job runs
        if states[-1] == "JOB_STATE_RUNNING":
            raise KeyboardInterrupt
        server.jobs[created.name.rsplit("/", 1)[1]].running.wait()

    with pytest.raises(KeyboardInterrupt):
        vertex_watch.follow(
            client,
            created.name,
            poll_s=0.1,
            on_change=lambda j: states.append(j.state.name),
            say=said.append,
            sleep=interrupt_once_running,
        )
    (job,) = server.jobs.values()
    assert ("POST", f"/v1/{created.name}:cancel", None) in [(m, p, b or None) for m, p, b in server.requests]
    job.done.wait()
    assert job.state == "JOB_STATE_CANCELLED" and all(r.proc.returncode is not None for r in job.replicas)
    assert said == [
        f"cancelled Vertex AI job {created.name} (the flow run was interrupted); it stops within "
        f"minutes: {vertex_watch.console_url(created.name)}"
    ]
    assert client.get_custom_job(name=created.name).state == v1.JobState.JOB_STATE_CANCELLED


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler, as a user's `gpt2ja` process has it, for the test's duration.

    A library that an earlier test of the session ran in-process can leave another handler behind; it takes
    the re-raised signal without a KeyboardInterrupt, and the held job is then polled for ever.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_a_signal_during_the_create_call_waits_for_the_job_then_cancels_it(stand_in, default_sigint):
    """Ctrl-C while create_custom_job is in flight: held back until the job's name is known, then it cancels."""
    server = stand_in(HOLD)
    client = vertex.job_client("us-central1")
    create = client.create_custom_job

    def create_while_interrupted(**kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, in the middle of the call
        return create(**kwargs)

    client.create_custom_job = create_while_interrupted
    seen = []
    with pytest.raises(KeyboardInterrupt):
        vertex_watch.run(
            client,
            vertex.custom_job_request(TWO_HOSTS, ["train"]),
            poll_s=0.1,
            on_created=seen.append,
            on_change=seen.append,
            say=seen.append,
        )
    (job,) = server.jobs.values()
    assert seen == [
        f"cancelled Vertex AI job {job.body['name']} (the flow run was interrupted); it stops within "
        f"minutes: {vertex_watch.console_url(job.body['name'])}"
    ]
    assert ("POST", f"/v1/{job.body['name']}:cancel") in [(m, p) for m, p, _ in server.requests]
    job.done.wait()
    assert job.state == "JOB_STATE_CANCELLED"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are back


def test_a_refused_request_is_one_line_naming_the_job_and_where(stand_in):
    server = stand_in(HOLD)
    request = vertex.custom_job_request(TWO_HOSTS, ["train"])
    request.custom_job.job_spec.worker_pool_specs[1].container_spec.image_uri = ""
    with pytest.raises(vertex_watch.VertexJobError) as refused:
        vertex_watch.create(vertex.job_client("us-central1"), request)
    assert str(refused.value) == (
        "Vertex AI refused the job 'gpt2ja-train' in projects/p1/locations/us-central1: 400 POST "
        f"{server.url}/v1/projects/p1/locations/us-central1/customJobs?%24alt=json%3Benum-encoding%3Dint: "
        "workerPoolSpecs[1].containerSpec.imageUri is required; check the project, region, quota and image"
    )
    assert server.jobs == {}


def test_the_endpoint_variable_reaches_only_this_machine(monkeypatch):
    monkeypatch.setenv(vertex.ENDPOINT_ENV, "https://europe-west4-aiplatform.googleapis.com")
    with pytest.raises(
        vertex.JobError,
        match=r"is not an http://127\.0\.0\.1:PORT address; it is for the local "
        r"stand-in of tests/vertex_server\.py only: unset it",
    ):
        vertex.job_client("europe-west4")
    monkeypatch.delenv(vertex.ENDPOINT_ENV)  # Vertex AI itself: credentials needed, and named when missing
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    with pytest.raises(
        vertex.JobError,
        match=r"^no Google Cloud credentials for Vertex AI here \(File "
        r"/nonexistent/key\.json was not found\.\); run `gcloud auth "
        r"application-default login` or set GOOGLE_APPLICATION_CREDENTIALS$",
    ):
        vertex.job_client("europe-west4")


@pytest.mark.slow
def test_cancelling_the_flow_run_from_prefect_cancels_the_job(prefect_harness, bucket, stand_in, tmp_path):
    """The UI's Cancel on a deployment served as `gpt2ja serve` serves it (prefect.serve): the runner SIGTERMs the
    flow run's process, whose follow loop cancels the job."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Cancelling

    server = stand_in(HOLD)  # replicas that run until killed
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serving = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import prefect; from gpt2ja.flows.vertex_job import "
                "train_vertex_flow as f; prefect.serve(f.to_deployment(name='cancel-test'))",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with get_client(sync_client=True) as client:
            while True:  # `serve` registers the deployment, then polls for runs
                assert serving.poll() is None, log.read_text()
                try:
                    deployment = client.read_deployment_by_name("train-vertex/cancel-test")
                    break
                except ObjectNotFound:
                    time.sleep(0.2)
            flow_run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={
                    "shards_uri": storage.join(bucket, "shards"),
                    "run_uri": storage.join(bucket, "runs", "cancelled"),
                    "settings": SETTINGS.model_dump(mode="json"),
                    "job": TWO_HOSTS.model_dump(mode="json"),
                    "poll_seconds": 0.2,
                },
            )
            while not server.created.wait(0.2):
                assert serving.poll() is None, log.read_text()
            (job,) = server.jobs.values()
            job.running.wait()
            client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the test"), force=True)
            job.done.wait()
            while not (state := client.read_flow_run(flow_run.id).state).is_final():
                time.sleep(0.2)
    finally:
        procs.kill_group(serving)
    assert job.state == "JOB_STATE_CANCELLED", log.read_text()
    assert any(m == "POST" and p == f"/v1/{job.body['name']}:cancel" for m, p, _ in server.requests)
    assert all(r.proc.returncode == -9 for r in job.replicas)  # killed by the cancel
    assert state.is_cancelled(), (state, log.read_text())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_gcloud_accepts_the_commands_the_flow_points_to(tmp_path):
    """Real gcloud parses the stream-logs / describe / cancel lines and stops at the missing account."""
    env = {
        **os.environ,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
    }
    env.pop("CLOUDSDK_CORE_ACCOUNT", None)
    for verb in ("stream-logs", "describe", "cancel"):
        line = vertex_watch.gcloud(verb, "projects/p1/locations/europe-west4/customJobs/1234")
        assert line == f"gcloud ai custom-jobs {verb} 1234 --region europe-west4 --project p1"
        got = procs.run(shlex.split(line), env=env)
        assert "You do not currently have an active account selected" in got.stderr, f"{line}\n{got.stderr}"

"""``train-vertex``: the train stage as a Vertex AI custom job on one or more GPU hosts, run from the Prefect UI.

The parameters are the ``train`` deployment's (the shards, the run, the same
``TrainSection`` form) plus the job's hardware (:class:`gpt2ja.flows.vertex.GpuJob`:
project, region, image, GPU type and count, hosts, service account) and ``dry_run``::

    train_vertex_flow("gs://b/gpt2ja/datasets/aozora/sp32k-1024", "gs://b/gpt2ja/runs/small",
                      TrainSection(preset="small", steps=20_000, batch_tokens=524_288, micro_batch=64),
                      GpuJob(project="p1", image="us-central1-docker.pkg.dev/p1/gpt2ja/gpt2ja:latest",
                             gpu_type="a100", gpus=8, replicas=2))

1. render: the ``CreateCustomJobRequest`` of :mod:`gpt2ja.flows.vertex` (one host: one worker
   pool; N hosts: the chief's pool + N−1 workers, ``multi_worker``), shown exactly as
   sent (REST JSON) in the artifact ``train-vertex-{run}-request``. ``dry_run`` stops here.
2. the shards' manifest must be in the bucket (a job on missing shards fails only
   after its machines were provisioned).
3. create the job and follow it to its end (:mod:`gpt2ja.infra.vertex_watch`): each state goes
   to the log and to the artifact ``train-vertex-{run}-job`` (console link, log
   command, state history); while it runs, the run's ``metrics.jsonl`` in the bucket
   drives ``train-{run}-progress`` and the loss table (:class:`gpt2ja.flows.artifacts.TrainLive`).
   A failed or cancelled job fails the flow with one line naming it and its logs;
   cancelling the flow run cancels the job.
4. the run's manifest is checked (present, files there, these settings), so a
   completed flow run is a complete training run; then the loss table and curve.

Never run against Google Cloud: tested against the local stand-in of
``tests/vertex_server.py`` (``tests/test_vertex_job.py``).
"""

# No `from __future__ import annotations`: the parameters' types stay objects, so a flow run that gets this flow
# pickled by value (`train_vertex_flow.serve()`: Prefect's runner) still resolves TrainSection and GpuJob.
import datetime as dt
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from gpt2ja.flows import artifacts
from gpt2ja.flows.config import TrainSection
from gpt2ja.flows.stages import call_stage
from gpt2ja.flows.vertex import GpuJob

STAGE = "train-vertex"


def _key(run_uri: str, what: str) -> str:
    return artifacts.key(STAGE, artifacts.name_of(run_uri), what)


@task(cache_policy=NO_CACHE, task_run_name="render-vertex-job")
def render_task(
    shards_uri: str,
    run_uri: str,
    settings: TrainSection,
    job: GpuJob,  # type: ignore[valid-type]
    dry_run: bool,
) -> str:
    """The CreateCustomJob request as the REST JSON (what is sent), published as a Markdown artifact."""
    from gpt2ja.flows import vertex

    args = call_stage(STAGE, vertex.train_args, settings, shards_uri, run_uri, job)
    text = vertex.request_json(call_stage(STAGE, vertex.custom_job_request, job, args))
    pools = "one worker pool" if job.replicas == 1 else f"the chief's pool + {job.replicas - 1} worker(s)"
    verdict = (
        "dry run: rendered only, nothing created" if dry_run else "created with JobServiceClient.create_custom_job"
    )
    artifacts.markdown(
        _key(run_uri, "request"),
        f"# Vertex AI custom job for {run_uri}\n\n{job.replicas} host(s) × {job.gpus} "
        f"{job.gpu_type.upper()} ({job.machine_type}), {pools}, in {job.project}/{job.region}; "
        f"{verdict}.\n\n```json\n{text}\n```\n",
        f"{STAGE} request for {run_uri}",
    )
    get_run_logger().info(
        "%s: %d host(s) × %d %s (%s), strategy %s; %s",
        run_uri,
        job.replicas,
        job.gpus,
        job.gpu_type,
        job.machine_type,
        job.strategy(),
        verdict,
    )
    return text


def _metrics(run_uri: str) -> list[dict]:
    from gpt2ja.model.evaluate import read_metrics  # storage only, no TensorFlow

    return read_metrics(run_uri)


class _JobView:
    """The flow's view of a job while it runs: state lines in the log, the job artifact, the run's progress.

    Presentation only: a failure to publish is one warning, and the job is followed on without it.
    """

    def __init__(self, run_uri: str, steps: int):
        self.run_uri, self.steps = run_uri, steps
        self.history: list[tuple[str, str]] = []
        self.live: artifacts.TrainLive | None = None
        self._fed = 0
        self._broken: set[str] = set()

    def on_created(self, job) -> None:
        from gpt2ja.infra import vertex_watch

        get_run_logger().info(
            "created Vertex AI job %s: %s; logs: %s",
            job.name,
            vertex_watch.console_url(job.name),
            vertex_watch.gcloud("stream-logs", job.name),
        )
        self._guarded("progress", self._start_progress)

    def on_change(self, job) -> None:
        state = job.state.name
        self.history.append((dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), state))
        get_run_logger().info("Vertex AI job %s: %s", job.name, state)
        self._guarded("job artifact", self._publish, job)

    def on_poll(self, job) -> None:
        if job.state.name not in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING"):
            self._guarded("progress", self._feed)

    def finish(self) -> None:
        if self.live is not None:
            self._guarded("progress", self.live.finish)

    def _start_progress(self) -> None:
        self.live = artifacts.TrainLive(self.run_uri, self.steps)  # a resumed run starts where its metrics end
        self._fed = max((r["step"] for r in _metrics(self.run_uri)), default=0)

    def _feed(self) -> None:
        """New lines of the run's metrics.jsonl in the bucket → the progress artifact and the loss table."""
        if self.live is None:
            return
        for record in _metrics(self.run_uri):
            if record["step"] > self._fed:
                self.live.on_log(record["step"], record)
                self._fed = record["step"]

    def _publish(self, job) -> None:
        from gpt2ja.infra import vertex_watch

        rows = "\n".join(f"| {when} | {s} |" for when, s in self.history)
        ended = job.state.name in vertex_watch.ENDED and job.error.message
        artifacts.markdown(
            _key(self.run_uri, "job"),
            f"# Vertex AI job {job.display_name}: {job.state.name}\n\n"
            f"* job: `{job.name}`\n* console: {vertex_watch.console_url(job.name)}\n"
            f"* logs: `{vertex_watch.gcloud('stream-logs', job.name)}`\n"
            f"* cancel: cancel this flow run, or `{vertex_watch.gcloud('cancel', job.name)}`\n"
            f"* run: {self.run_uri}\n\n| time (UTC) | state |\n| --- | --- |\n{rows}\n"
            + (f"\n{vertex_watch.failure(job)}\n" if ended else ""),
            f"Vertex AI job training {self.run_uri}",
        )

    def _guarded(self, what: str, fn, *args) -> None:
        if what in self._broken:
            return
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - the view must never stop following the job
            self._broken.add(what)
            get_run_logger().warning(
                "%s of %s: %s: %s; following the job without it",
                what,
                self.run_uri,
                type(err).__name__,
                " ".join(str(err).split()),
            )


@task(cache_policy=NO_CACHE, task_run_name="vertex-job")  # no retries: a retry would create a second job
def vertex_job_task(request_json: str, region: str, run_uri: str, steps: int, poll_seconds: float) -> str:
    """Create the job and follow it to its end; returns its resource name (a failed job raises one line)."""
    from google.cloud import aiplatform_v1 as v1

    from gpt2ja.flows import vertex
    from gpt2ja.infra import vertex_watch

    request = v1.CreateCustomJobRequest.from_json(request_json)
    client = call_stage(STAGE, vertex.job_client, region)
    view = _JobView(run_uri, steps)
    job = call_stage(
        STAGE,
        vertex_watch.run,
        client,
        request,
        poll_s=poll_seconds,
        on_created=view.on_created,
        on_change=view.on_change,
        on_poll=view.on_poll,
        say=get_run_logger().warning,
    )
    view.finish()
    return job.name


@task(cache_policy=NO_CACHE, task_run_name="check-run")
def check_run_task(
    shards_uri: str,
    run_uri: str,
    settings: TrainSection,
    job: GpuJob,  # type: ignore[valid-type]
    name: str,
) -> dict:
    """The run the job wrote is complete (manifest, files, settings); then the loss table and curve."""
    from gpt2ja.flows import vertex
    from gpt2ja.infra import vertex_watch

    cfg = vertex.job_train_config(settings, shards_uri, run_uri, job)
    if cfg.stop_at is not None:
        get_run_logger().info(
            "run %s pauses at stop_at %d by design: no manifest to check; run again without stop_at to finish it",
            run_uri,
            cfg.stop_at,
        )
        return {"uri": run_uri, "job": name, "complete": False}
    manifest = call_stage(STAGE, vertex_watch.check_run, run_uri, cfg, name)
    get_run_logger().info(
        "run %s: complete, %s steps (manifest checked)", run_uri, (manifest.get("counts") or {}).get("steps")
    )
    artifacts.train(run_uri)
    return {"uri": run_uri, "job": name, "complete": True}


@task(cache_policy=NO_CACHE, task_run_name="require-shards")
def require_shards_task(shards_uri: str) -> None:
    from gpt2ja.infra.stage import require

    call_stage(
        STAGE,
        require,
        shards_uri,
        "shards",
        "build them first (the pipeline with a gs:// root, or copy them with `gcloud storage cp -r`)",
    )


@flow(name=STAGE, log_prints=True)
def train_vertex_flow(
    shards_uri: str,
    run_uri: str,
    settings: TrainSection,  # type: ignore[valid-type]
    job: GpuJob,
    dry_run: bool = False,
    poll_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 30.0,
) -> dict:
    """Train on Vertex AI (one or more GPU hosts) from the train settings; the run is checked complete at the end.

    Args:
        shards_uri: the shards on gs:// (gs://BUCKET/PREFIX/datasets/CORPUS/DATASET)
        run_uri: the run directory on gs://; an existing run resumes from its newest checkpoint
        settings: the train settings (the train deployment's form); the strategy follows the hardware
        job: where and on what: project, region, image of deploy/Dockerfile, GPU type and count per host, hosts
        dry_run: render the request (artifact) and create nothing
        poll_seconds: seconds between two requests for the job's state
    """
    text = render_task(shards_uri, run_uri, settings, job, dry_run)
    if dry_run:
        return {"uri": run_uri, "job": None, "dry_run": True}
    require_shards_task(shards_uri)
    name = vertex_job_task(text, job.region, run_uri, settings.steps, poll_seconds)
    return {**check_run_task(shards_uri, run_uri, settings, job, name), "dry_run": False}

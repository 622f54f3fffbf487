"""A local STAND-IN for three Vertex AI custom-job REST methods; it is not Vertex AI and knows only what is here.

The real client library (``google-cloud-aiplatform``'s ``JobServiceClient`` with
``transport="rest"``) is pointed at it through ``GPT2JA_VERTEX_API_ENDPOINT``
(:func:`gpt2ja.flows.vertex.job_client`). It answers, on 127.0.0.1:

    POST /v1/projects/{p}/locations/{l}/customJobs            create: the CustomJob JSON, answered with its name
    GET  /v1/projects/{p}/locations/{l}/customJobs/{id}        the job, with its state (and error when it failed)
    POST /v1/projects/{p}/locations/{l}/customJobs/{id}:cancel

and records every request (anything else is answered 404). The client sends
enums as numbers (``$alt=json;enum-encoding=int``); answers carry the state by
name, which the client reads as well. A created job RUNS:
each worker pool's replicas are started as local processes — the container's
``command`` looked up in ``entrypoints`` (``{"gpt2ja": [".venv/bin/gpt2ja"]}``:
this checkout instead of the image), its ``args`` and ``env`` as given — with
``TF_CONFIG`` and ``CLUSTER_SPEC`` set the way Vertex AI documents them
(https://cloud.google.com/vertex-ai/docs/training/distributed-training): pool 0 is
task type ``chief``, pool 1 ``worker`` (pool 2 ``ps``, pool 3 ``evaluator``, which
is not part of the cluster), addresses 127.0.0.1 on free ports, ``environment``
``cloud`` and ``job`` the CustomJobSpec. The job is ``JOB_STATE_PENDING`` until
every replica started, then ``JOB_STATE_RUNNING``; ``SUCCEEDED`` when every
replica exits 0; ``FAILED`` at the first that does not (the others are killed,
as Vertex AI tears a failed job down), with an error message in Vertex AI's
words; ``CANCELLED`` after a cancel (every replica killed). Replica output goes
to ``{log_dir}/{job id}-workerpool{i}-{r}.log``.

What it does not do: images, machines, accelerators, quotas, IAM, regions,
restarts (``restart_job_on_worker_restart``), timeouts, list/delete, or any
check of the request beyond a few of Vertex AI's rules (a display name, at
least one pool, pool 0 with exactly one replica, a container image).

Every replica is the leader of its own process group; stopping the server
(or a test ending early) kills every group it started.

Example::

    with VertexServer({"gpt2ja": [str(REPO / ".venv/bin/gpt2ja")]}, log_dir=tmp_path) as vertex:
        monkeypatch.setenv("GPT2JA_VERTEX_API_ENDPOINT", vertex.url)
        ...                                  # create, poll, cancel with the real client
        (job,) = vertex.jobs.values()
        [r.task_type for r in job.replicas]  # ["chief", "worker"]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.net import free_ports

#: Vertex AI's worker pools by position → TF_CONFIG task type
#: (https://cloud.google.com/vertex-ai/docs/training/distributed-training)
TASK_TYPES = ("chief", "worker", "ps", "evaluator")
JOBS = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/customJobs"
    r"(?:/(?P<id>[0-9]+)(?P<cancel>:cancel)?)?$"
)
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Replica:
    """One replica of a worker pool: a local process standing in for a container on a VM."""

    pool: int
    index: int
    task_type: str
    tf_config: dict
    command: list[str]
    log: Path
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"workerpool{self.pool}-{self.index}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


@dataclass
class Job:
    """A created job: its CustomJob JSON as the API returns it, and its replicas."""

    body: dict
    replicas: list[Replica] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    cancel_requested: bool = False

    @property
    def state(self) -> str:
        return self.body["state"]


class VertexServer:
    """The stand-in on a free 127.0.0.1 port (``url``); a context manager. See the module's docstring."""

    def __init__(self, entrypoints: dict[str, list[str]], *, log_dir: str | os.PathLike, env: dict | None = None):
        self.entrypoints = entrypoints
        self.log_dir = Path(log_dir)
        self.env = {**os.environ, **(env or {})}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.jobs: dict[str, Job] = {}
        self.created = threading.Event()  # set at the first job created
        self._lock = threading.Lock()
        self._next_id = 1000
        self._stopping = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, status: int, value: dict) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, reason: str, message: str) -> None:
                self._reply(status, {"error": {"code": status, "message": message, "status": reason}})

            def _route(self, method: str) -> None:
                path = self.path.split("?")[0]
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw.strip() else None
                server.requests.append((method, path, body))
                m = JOBS.match(path)
                if m is None:
                    return self._error(404, "NOT_FOUND", f"stand-in: no method {method} {path}")
                parent = f"projects/{m['project']}/locations/{m['location']}"
                if method == "POST" and m["id"] is None:
                    status, value = server._create(parent, body or {})
                elif method == "GET" and m["id"] and not m["cancel"]:
                    status, value = server._get(f"{parent}/customJobs/{m['id']}")
                elif method == "POST" and m["cancel"]:
                    status, value = server._cancel(f"{parent}/customJobs/{m['id']}")
                else:
                    return self._error(404, "NOT_FOUND", f"stand-in: no method {method} {path}")
                if status != 200:
                    return self._error(status, value["status"], value["message"])
                self._reply(200, value)

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ----------------------------------------------------------------- the API

    def _create(self, parent: str, job: dict) -> tuple[int, dict]:
        pools = (job.get("jobSpec") or {}).get("workerPoolSpecs") or []
        problems = ["customJob.displayName is required"] if not job.get("displayName") else []
        if not pools:
            problems.append("customJob.jobSpec.workerPoolSpecs must have at least one pool")
        elif int(pools[0].get("replicaCount", 0)) != 1:
            problems.append("the first worker pool must have replicaCount 1")
        problems += [
            f"workerPoolSpecs[{i}].containerSpec.imageUri is required"
            for i, p in enumerate(pools)
            if not (p.get("containerSpec") or {}).get("imageUri")
        ]
        if problems:
            return 400, {"status": "INVALID_ARGUMENT", "message": problems[0]}
        with self._lock:
            job_id = str(self._next_id)
            self._next_id += 1
        now = _now()
        body = {
            **job,
            "name": f"{parent}/customJobs/{job_id}",
            "state": "JOB_STATE_PENDING",
            "createTime": now,
            "updateTime": now,
        }
        record = Job(body=body)
        self.jobs[job_id] = record
        self.created.set()
        threading.Thread(target=self._run, args=(job_id, record), daemon=True).start()
        return 200, dict(body)

    def _get(self, name: str) -> tuple[int, dict]:
        job = self.jobs.get(name.rsplit("/", 1)[1])
        if job is None or job.body["name"] != name:
            return 404, {"status": "NOT_FOUND", "message": f"CustomJob {name} not found"}
        return 200, dict(job.body)

    def _cancel(self, name: str) -> tuple[int, dict]:
        job = self.jobs.get(name.rsplit("/", 1)[1])
        if job is None or job.body["name"] != name:
            return 404, {"status": "NOT_FOUND", "message": f"CustomJob {name} not found"}
        with self._lock:
            if job.state in TERMINAL:
                return 400, {
                    "status": "FAILED_PRECONDITION",
                    "message": f"CustomJob {name} is already in a terminal state {job.state}",
                }
            job.cancel_requested = True
            self._set(job, "JOB_STATE_CANCELLING")
        self._kill(job)
        return 200, {}

    # ----------------------------------------------------------------- running a job

    def _set(self, job: Job, state: str, **extra) -> None:
        job.body.update(state=state, updateTime=_now(), **extra)

    def _replicas(self, job_id: str, spec: dict) -> list[Replica]:
        pools = spec["workerPoolSpecs"]
        counts = [int(p.get("replicaCount", 0)) for p in pools]
        ports = iter(free_ports(sum(counts)))
        addresses = [[f"127.0.0.1:{next(ports)}" for _ in range(n)] for n in counts]
        cluster = {TASK_TYPES[i]: a for i, a in enumerate(addresses) if a and TASK_TYPES[i] != "evaluator"}
        cluster_spec = {f"workerpool{i}": a for i, a in enumerate(addresses) if a}
        replicas = []
        for i, (pool, n) in enumerate(zip(pools, counts)):
            container = pool["containerSpec"]
            command = list(container.get("command") or [])
            if not command or command[0] not in self.entrypoints:
                raise LookupError(
                    f"stand-in: no local entry point for the container command {command[:1]} "
                    f"(known: {sorted(self.entrypoints)})"
                )
            for r in range(n):
                task = {"type": TASK_TYPES[i], "index": r}
                tf_config = {"cluster": cluster, "task": {**task, "trial": ""}, "environment": "cloud", "job": spec}
                env = {
                    **self.env,
                    **{e["name"]: e.get("value", "") for e in container.get("env") or []},
                    "TF_CONFIG": json.dumps(tf_config),
                    "CLUSTER_SPEC": json.dumps(
                        {
                            "cluster": cluster_spec,
                            "environment": "cloud",
                            "task": {"type": f"workerpool{i}", "index": r},
                        }
                    ),
                }
                replicas.append(
                    Replica(
                        pool=i,
                        index=r,
                        task_type=TASK_TYPES[i],
                        tf_config=tf_config,
                        env=env,
                        command=self.entrypoints[command[0]] + command[1:] + list(container.get("args") or []),
                        log=self.log_dir / f"{job_id}-workerpool{i}-{r}.log",
                    )
                )
        return replicas

    def _run(self, job_id: str, job: Job) -> None:
        """Start every replica, then follow them to the job's end state."""
        try:
            job.replicas = self._replicas(job_id, job.body["jobSpec"])
        except LookupError as err:
            self._set(job, "JOB_STATE_FAILED", endTime=_now(), error={"code": 3, "message": str(err)})
            job.done.set()
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if job.cancel_requested or self._stopping:
                self._set(job, "JOB_STATE_CANCELLED", endTime=_now(), error={"code": 1, "message": "CANCELED"})
                job.done.set()
                return
            for r in job.replicas:
                with open(r.log, "wb") as log:
                    # stdin: a pipe this process holds, so a replica that reads it ends with this process too
                    r.proc = subprocess.Popen(
                        r.command,
                        env=r.env,
                        stdin=subprocess.PIPE,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
            self._set(job, "JOB_STATE_RUNNING", startTime=_now())
        job.running.set()
        exited = threading.Condition()
        finished: list[Replica] = []

        def wait(r: Replica) -> None:
            r.proc.wait()
            with exited:
                finished.append(r)
                exited.notify()

        for r in job.replicas:
            threading.Thread(target=wait, args=(r,), daemon=True).start()
        failed = None
        with exited:
            while len(finished) < len(job.replicas) and failed is None:
                exited.wait()
                failed = next((r for r in finished if r.proc.returncode != 0), None)
        self._kill(job)  # a failed replica ends the job: Vertex AI tears the others down
        for r in job.replicas:  # the end state is reported once every replica is gone
            r.proc.wait()
            r.proc.stdin.close()
        with self._lock:
            if job.cancel_requested:
                self._set(job, "JOB_STATE_CANCELLED", endTime=_now(), error={"code": 1, "message": "CANCELED"})
            elif failed is not None:
                project = job.body["name"].split("/")[1]
                self._set(
                    job,
                    "JOB_STATE_FAILED",
                    endTime=_now(),
                    error={
                        "code": 3,
                        "message": (
                            f"The replica {failed.name} exited with a non-zero status of {failed.proc.returncode}. "
                            "To find out more about why your job exited please check the logs: "
                            f"https://console.cloud.google.com/logs/viewer?project={project}&resource=ml_job%2Fjob_id%2F"
                            f"{job_id}&advancedFilter=resource.type%3D%22ml_job%22%0Aresource.labels.job_id%3D%22{job_id}%22"
                        ),
                    },
                )
            else:
                self._set(job, "JOB_STATE_SUCCEEDED", endTime=_now())
        job.done.set()

    def _kill(self, job: Job) -> None:
        for r in job.replicas:
            if r.proc is not None and r.proc.poll() is None:
                try:
                    os.killpg(r.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # ----------------------------------------------------------------- lifetime

    def __enter__(self) -> "VertexServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._stopping = True
        for job in self.jobs.values():
            self._kill(job)
            for r in job.replicas:
                if r.proc is not None:
                    r.proc.wait()
                    r.proc.stdin.close()
        self._server.shutdown()
        self._server.server_close()

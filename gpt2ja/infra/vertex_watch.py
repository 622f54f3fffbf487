"""A Vertex AI custom job followed to its end: created, polled, cancelled when interrupted; then the run it wrote.

What the ``train-vertex`` flow (``gpt2ja/flows/vertex_job.py``) does with the request of
:func:`gpt2ja.infra.vertex.custom_job_request`, in three calls::

    client = gpt2ja.infra.vertex.job_client(region)
    job = run(client, request, poll_s=30, on_created=log, on_change=print_state)  # VertexJobError unless it succeeded
    manifest = check_run(run_uri, cfg, job.name)      # the run is complete: manifest, its files, these settings

:func:`run` creates the job, then asks for it every ``poll_s`` seconds (sleeping
between) and calls ``on_change`` at each new state (:func:`follow` does the same
for a job that exists). Interrupted — Ctrl-C, or the SIGTERM by which a Prefect
worker or ``serve`` cancels a flow run (Prefect raises it as ``TerminationSignal``)
— it cancels the job (``cancel_custom_job``) and lets the interruption go on; a
signal that arrives while the create call is in flight is held until the job's
name is known, so no created job is left running. An API error while polling does
not cancel: the job may be fine, and the error line says how to follow or cancel it.

NEVER RUN AGAINST GOOGLE CLOUD: tested with the real client library over HTTP
against the local stand-in of ``tests/vertex_server.py``.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator

from gpt2ja.infra.errors import Gpt2jaError

SUCCEEDED = "JOB_STATE_SUCCEEDED"
#: the states a custom job does not leave (aiplatform_v1.JobState); every one but SUCCEEDED fails the flow
ENDED = frozenset(
    {SUCCEEDED, "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"}
)
#: how long a poll retries transient API errors (503, 429, connection resets) before giving up
POLL_RETRY_S = 600.0


class VertexJobError(Gpt2jaError, RuntimeError):
    """A job refused, failed, cancelled, or one whose run is not complete: one line naming the job and where to look."""


# ----------------------------------------------------------------- where to look


def _parts(name: str) -> tuple[str, str, str]:
    """(project, region, job id) of ``projects/P/locations/R/customJobs/ID``."""
    bits = name.split("/")
    return bits[1], bits[3], bits[5]


def console_url(name: str) -> str:
    """The job's page in the Google Cloud console (the form google-cloud-aiplatform 2.7 logs for custom jobs)."""
    project, region, job_id = _parts(name)
    return f"https://console.cloud.google.com/agent-platform/locations/{region}/training/{job_id}?project={project}"


def gcloud(verb: str, name: str) -> str:
    """``gcloud ai custom-jobs VERB ID --region R --project P`` (verbs: stream-logs, describe, cancel)."""
    project, region, job_id = _parts(name)
    return shlex.join(["gcloud", "ai", "custom-jobs", verb, job_id, "--region", region, "--project", project])


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


# ----------------------------------------------------------------- create, follow, cancel


def create(client, request):
    """``client.create_custom_job(request)``: the created CustomJob, or one line saying why Vertex AI refused it."""
    from google.api_core.exceptions import GoogleAPICallError

    try:
        return client.create_custom_job(request=request)
    except GoogleAPICallError as err:
        raise VertexJobError(
            f"Vertex AI refused the job {request.custom_job.display_name!r} in {request.parent}: "
            f"{_one_line(err)}; check the project, region, quota and image"
        ) from None


def run(
    client,
    request,
    *,
    poll_s: float,
    on_created: Callable,
    on_change: Callable,
    say: Callable[[str], None] = print,
    on_poll: Callable | None = None,
    sleep: Callable[[float], None] = time.sleep,
):
    """Create the job and :func:`follow` it; ``on_created(job)`` first. An interruption from the moment the job
    exists cancels it: SIGINT and SIGTERM that arrive while the create call is in flight (the job's name is not
    known until it answers) are held and raised again right after, where they cancel the job."""
    caught: list[int] = []
    try:
        with _held(caught, signal.SIGINT, signal.SIGTERM):
            job = create(client, request)
    except Exception:
        _raise_again(caught)  # no job: the interruption goes on (and wins over the refusal)
        raise
    with cancelled_if_interrupted(client, job.name, say):
        _raise_again(caught)  # handled now as they would have been then: KeyboardInterrupt, TerminationSignal
        on_created(job)
        return _poll(client, job.name, poll_s, on_change, on_poll, sleep)


@contextlib.contextmanager
def _held(caught: list[int], *signums: int) -> Iterator[None]:
    """Append ``signums`` to ``caught`` instead of handling them while the block runs (:func:`_raise_again` after).

    Only in the main thread (the only one Python runs signal handlers in, and may change them from).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _raise_again(caught: list[int]) -> None:
    for signum in caught:
        signal.raise_signal(signum)


def follow(
    client,
    name: str,
    *,
    poll_s: float,
    on_change: Callable,
    say: Callable[[str], None] = print,
    on_poll: Callable | None = None,
    sleep: Callable[[float], None] = time.sleep,
):
    """Poll the job until it ends; returns it at ``JOB_STATE_SUCCEEDED``, else raises :class:`VertexJobError`.

    ``on_change(job)`` at each new state, ``on_poll(job)`` after every poll (the
    caller's view of the run; its errors are the caller's to swallow). On an
    interruption (any BaseException that is not an Exception) the job is
    cancelled first, and ``say`` reports it.
    """
    with cancelled_if_interrupted(client, name, say):
        return _poll(client, name, poll_s, on_change, on_poll, sleep)


def _poll(client, name: str, poll_s: float, on_change: Callable, on_poll: Callable | None, sleep: Callable):
    from google.api_core import retry as retries
    from google.api_core.exceptions import GoogleAPICallError

    again = retries.Retry(predicate=retries.if_transient_error, initial=1.0, maximum=60.0, timeout=POLL_RETRY_S)
    state = None
    while True:
        try:
            job = client.get_custom_job(name=name, retry=again, timeout=60.0)
        except GoogleAPICallError as err:
            raise VertexJobError(
                f"Vertex AI job {name}: its state could not be read ({_one_line(err)}); it may "
                f"still be running: follow it with `{gcloud('describe', name)}` or "
                f"{console_url(name)}, stop it with `{gcloud('cancel', name)}`"
            ) from None
        if job.state.name != state:
            state = job.state.name
            on_change(job)
        if on_poll is not None:
            on_poll(job)
        if state in ENDED:
            break
        sleep(poll_s)
    if state != SUCCEEDED:
        raise VertexJobError(failure(job))
    return job


@contextlib.contextmanager
def cancelled_if_interrupted(client, name: str, say: Callable[[str], None] = print) -> Iterator[None]:
    """Cancel the job when the block is interrupted: Ctrl-C, Prefect's TerminationSignal (a cancelled flow run),
    SystemExit — any BaseException that is not an Exception; the interruption then goes on."""
    try:
        yield
    except Exception:
        raise
    except BaseException:
        cancel(client, name, say)
        raise


def failure(job) -> str:
    """One line: which job ended how, Vertex AI's reason, and where its logs are."""
    reason = _one_line(job.error.message) if job.error and job.error.message else "no reason given"
    return (
        f"Vertex AI job {job.name} ({job.display_name}) ended {job.state.name}: {reason}; its logs: "
        f"`{gcloud('stream-logs', job.name)}` or {console_url(job.name)}"
    )


def cancel(client, name: str, say: Callable[[str], None] = print) -> bool:
    """Ask Vertex AI to cancel the job; True when it took the request (it stops within minutes)."""
    from google.api_core.exceptions import GoogleAPICallError

    try:
        client.cancel_custom_job(name=name, timeout=30.0)
    except GoogleAPICallError as err:
        say(
            f"could not cancel Vertex AI job {name} ({_one_line(err)}); if it still runs, stop it with "
            f"`{gcloud('cancel', name)}`"
        )
        return False
    say(f"cancelled Vertex AI job {name} (the flow run was interrupted); it stops within minutes: {console_url(name)}")
    return True


# ----------------------------------------------------------------- the run the job wrote


def check_run(run_uri: str, cfg, name: str) -> dict:
    """The run's manifest once the job succeeded: present, every listed file there, and of ``cfg``'s settings.

    ``cfg`` is the ``TrainConfig`` every replica trained (:func:`gpt2ja.infra.vertex.job_train_config`).
    A job that succeeded without this is a run that is not complete: one line naming the job's logs.
    """
    from gpt2ja.infra.stage import require, verify

    logs = f"see the job's logs: `{gcloud('stream-logs', name)}`"
    manifest = require(run_uri, "run", f"job {name} succeeded without finishing it; {logs}", error=VertexJobError)
    problems = verify(run_uri, manifest=manifest)[1]
    if problems:
        raise VertexJobError(f"run {run_uri} after job {name}: {problems[0]}; {logs}")
    want = json.loads(json.dumps(cfg.fingerprint_config()))
    got = (manifest.get("config") or {}).get("train") or {}
    differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if differ:
        raise VertexJobError(
            f"run {run_uri} holds a run of other settings than job {name} trained (differs in: "
            f"{', '.join(differ)}); {logs}"
        )
    return manifest

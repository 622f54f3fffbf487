"""Live training state in Prefect: the progress artifact and the loss table read while the train flow runs.

The train flow runs a 10-step tiny model (bytes-tokenizer shards, as in
test_model_train) in a thread against Prefect's test server; the test holds the
run after its step-5 log (and evaluation) until it has read the artifacts
through the API, as the UI does. The throttling and the failure handling of
:class:`gpt2ja.flows.artifacts.Progress` are checked without a server (a fake clock).
"""

from __future__ import annotations

import json
import threading

import pytest

from gpt2ja.flows import artifacts
from tests import procs

# ----------------------------------------------------------------- without a server


class FakeApi:
    """``create_progress_artifact`` / ``update_progress_artifact`` recorded; ``fail`` makes them raise."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, float]] = []
        self.fail = False
        monkeypatch.setattr(artifacts, "create_progress_artifact", self.create)
        monkeypatch.setattr(artifacts, "update_progress_artifact", self.update)

    def create(self, progress, key, description):
        self._call("create", progress)
        return "id-1"

    def update(self, artifact_id, progress):
        assert artifact_id == "id-1"
        self._call("update", progress)

    def _call(self, what, progress):
        if self.fail:
            raise ConnectionError("the API is down")
        self.calls.append((what, progress))


def test_progress_is_throttled_but_its_first_and_last_values_are_sent(monkeypatch):
    api, now = FakeApi(monkeypatch), [100.0]
    progress = artifacts.Progress("train-x-progress", "x", every_s=5, clock=lambda: now[0])
    for step in range(1, 10):  # nine steps within a second of the start: none sent
        now[0] += 0.1
        progress(step, 20)
    now[0] += 5
    progress(10, 20)  # 5 s later: sent
    progress(10, 20)  # unchanged: not sent
    now[0] += 1
    progress(20, 20)  # 100 %: sent at once
    progress.finish()  # already 100 %
    assert api.calls == [("create", 0.0), ("update", 50.0), ("update", 100.0)]
    assert progress.percent == 100.0


def test_a_failed_update_is_logged_once_and_the_work_goes_on(monkeypatch, caplog):
    api, now = FakeApi(monkeypatch), [0.0]
    progress = artifacts.Progress("shards-x-progress", "x", every_s=0, clock=lambda: now[0])
    api.fail = True
    # on the logger itself: Prefect (re)configures the root logger's handlers when it sets up its logging
    monkeypatch.setattr(artifacts.log, "handlers", [caplog.handler])
    for done in range(1, 5):
        progress(done, 4)
    progress.finish()
    assert api.calls == [("create", 0.0)] and progress.percent == 0.0
    # one record (it may reach caplog twice: through this handler and through the root logger's, when set)
    records = {id(r): r for r in caplog.records if r.name == artifacts.log.name}
    [line] = [r.getMessage() for r in records.values()]
    assert line == "progress artifact shards-x-progress: ConnectionError: the API is down; the work goes on without it"


# ----------------------------------------------------------------- a training run, read while it runs


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=procs.STARTUP_LIMIT_S):
        yield


def _versions(client, artifact_key: str) -> list:
    """Every version of an artifact, oldest first."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    return client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key])), sort=ArtifactSort.CREATED_DESC
    )[::-1]


@pytest.mark.slow
def test_the_progress_and_loss_table_show_a_run_while_it_trains(prefect_harness, monkeypatch, tmp_path):
    pytest.importorskip("tensorflow")
    from prefect import get_client

    from gpt2ja.flows.config import TrainSection
    from gpt2ja.flows.stages import train_flow
    from tests.test_model_train import SEQ_LEN, make_shards

    shards = make_shards(tmp_path / "data")
    settings = TrainSection(
        preset="tiny",
        batch_tokens=8 * SEQ_LEN,
        micro_batch=8,
        steps=10,
        warmup_steps=2,
        learning_rate=3e-3,
        log_every=1,
        eval_every=5,
        eval_batches=2,
        checkpoint_every=5,
    )
    run = tmp_path / "live-run"
    monkeypatch.setattr(artifacts, "PROGRESS_EVERY_S", 0.0)  # every log step: the hold below sees step 5's percent

    # the hold: after the step-5 log (an evaluation) has updated the artifacts, the run waits for the test
    reached, release = threading.Event(), threading.Event()
    on_log = artifacts.TrainLive.on_log

    def held(self, step, record):
        on_log(self, step, record)
        if step == 5:
            reached.set()
            release.wait()

    monkeypatch.setattr(artifacts.TrainLive, "on_log", held)
    outcome: dict = {}
    flow_run = threading.Thread(
        target=lambda: outcome.update(state=train_flow(shards, str(run), settings, return_state=True))
    )
    flow_run.start()
    try:
        while not reached.wait(0.05) and flow_run.is_alive():
            pass
        assert reached.is_set(), f"the train flow ended before its step 5: {outcome.get('state')}"
        with get_client(sync_client=True) as client:
            [progress] = _versions(client, "train-live-run-progress")
            [table] = _versions(client, "train-live-run")
            [curve] = _versions(client, "train-live-run-loss-curve")
        assert flow_run.is_alive()
        assert (progress.type, progress.data) == ("progress", 50.0)
        rows = json.loads(table.data)
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
        assert rows[-1]["val_loss"] > 0 and all(r["val_loss"] is None for r in rows[:-1])
        assert "(training, at step 5/10)" in table.description
        assert "data:image/png;base64," in curve.data and "(training, at step 5/10)" in curve.data
    finally:
        release.set()
        flow_run.join()
    assert outcome["state"].is_completed(), outcome["state"]

    with get_client(sync_client=True) as client:
        [progress] = _versions(client, "train-live-run-progress")
        tables = _versions(client, "train-live-run")
        curves = _versions(client, "train-live-run-loss-curve")
    assert progress.data == 100.0
    # the evaluations at steps 5 and 10 while training, then the final one from metrics.jsonl
    assert [len(json.loads(t.data)) for t in tables] == [5, 10, 10]
    assert ["training, at" in t.description for t in tables] == [True, True, False]
    assert json.loads(tables[-1].data) == json.loads(tables[1].data)
    assert len(curves) == 3
    # one task run made them all: the UI lists them under the run
    assert len({a.task_run_id for a in [progress, *tables, *curves]}) == 1


@pytest.mark.slow
def test_a_data_stage_shows_its_phases_as_progress_artifacts(prefect_harness, tmp_path):
    """The clean flow's phases (filter, dedup, write), reported through infra.progress, become progress artifacts."""
    import shutil

    from prefect import get_client

    from gpt2ja.crawler.files import crawl_files
    from gpt2ja.flows.config import CleanSection
    from gpt2ja.flows.stages import clean_flow
    from tests.corpora import ZIPS

    text = tmp_path / "text"
    text.mkdir()
    for z in ZIPS[:6]:
        shutil.copy(z, text / z.name)
    raw = crawl_files(str(text), str(tmp_path / "root"), "live")
    out = str(tmp_path / "root" / "clean" / "live-clean")
    clean_flow([raw], out, CleanSection())
    with get_client(sync_client=True) as client:
        shown = {phase: _versions(client, f"clean-live-clean-progress-{phase}") for phase in ("filter", "write")}
    for phase, versions in shown.items():
        assert versions, f"no progress artifact for the {phase} phase"
        assert versions[-1].data == 100.0 and versions[-1].type == "progress", phase

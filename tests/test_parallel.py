"""gpt2ja.infra.parallel: the local pool keeps the order of the items and turns a dead worker into one line."""

from __future__ import annotations

import os

import pytest

from gpt2ja.infra.parallel import WorkerDied, map_with_progress, pool_map


def test_results_come_in_item_order_and_each_is_reported_once():
    seen = []
    assert map_with_progress(pool_map(2), len, ["ab", "c", "def"], ["a", "b", "c"], seen.append) == [2, 1, 3]
    assert sorted(seen) == [1, 2, 3]


def test_a_worker_killed_mid_part_is_one_line_not_a_traceback():
    with pytest.raises(
        WorkerDied,
        match=r"^a worker process died \(killed for memory\?\); rerun the same command "
        r"with fewer workers: finished parts are kept$",
    ):
        pool_map(2)(os._exit, [1, 1], ["a", "b"])  # the process ends without an answer, as under the OOM killer

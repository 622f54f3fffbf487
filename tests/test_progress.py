"""Progress output: a live bar on a terminal, plain periodic lines in a pipe, a quiet crawl.

The terminal tests run the real command with its stdout and stderr on a
pseudo-terminal (``os.openpty``) and read everything it drew; the pipe tests
run the same commands through :func:`tests.procs.run`. Inputs are tiny: the
bundled mirror's works (a clean corpus, a 3,000-piece tokenizer) and an
untrained tiny run with random weights.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from gpt2ja.infra import progress as prog
from tests import procs
from tests.conftest import MIRROR
from tests.corpora import mirror_stages, write_tiny_run

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ERASE_LINE = "\x1b[2K"  # rich's redraw of a live line: each refresh after the first erases the last one
BAR = "━"  # rich's bar


def gpt2ja(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpt2ja", *args]


def _env(**extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "GPT2JA_PROGRESS")
    }
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "TERM": "xterm-256color",
        "COLUMNS": "160",
        "LINES": "40",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **extra,
    }


def on_terminal(cmd: list[str], **env: str) -> tuple[int, str]:
    """Run ``cmd`` with stdin, stdout and stderr on a pseudo-terminal of 160 columns; (exit status, all it drew)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        cmd, stdin=slave, stdout=slave, stderr=slave, env=_env(**env), cwd=REPO, start_new_session=True
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            chunks.append(data)
        proc.wait()
    except BaseException:  # the test ended early: the command (and its workers) must not outlive it
        procs.kill_group(proc)
        raise
    finally:
        os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def in_pipes(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` with stdout and stderr on pipes; plain lines from the start (no 2 s quiet period)."""
    return procs.run(cmd, env=_env(GPT2JA_PROGRESS_DELAY_S="0", **env), cwd=REPO)


def assert_live_bar(out: str, desc: str) -> None:
    assert desc in out, out[-3000:]
    assert BAR in out and "100%" in out, out[-3000:]
    assert out.count(ERASE_LINE) >= 2, "the bar was drawn once, never refreshed"
    assert "done in" not in out  # the plain lines are for pipes


def assert_plain_lines(err: str, desc: str) -> list[str]:
    assert not ANSI.search(err), err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith(desc + " ")]
    assert lines and lines[-1].split(", ")[-1].startswith("done in"), err[-2000:]
    return lines


# ----------------------------------------------------------------------------- the helper


def test_mode_follows_the_variable_then_the_stream(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv(prog.ENV, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert prog.mode(Tty()) == "bar"
    assert prog.mode(open(os.devnull, "w")) == "plain"
    monkeypatch.setenv("TERM", "dumb")
    assert prog.mode(Tty()) == "plain"
    for value, expected in (("0", "off"), ("off", "off"), ("plain", "plain"), ("bar", "bar")):
        monkeypatch.setenv(prog.ENV, value)
        assert prog.mode(Tty()) == expected and prog.mode(open(os.devnull, "w")) == expected


def test_plain_lines_every_tenth_with_counts_rate_and_eta(monkeypatch):
    monkeypatch.setenv(prog.ENV, "plain")
    monkeypatch.setenv("GPT2JA_PROGRESS_DELAY_S", "0")
    lines: list[str] = []
    with prog.progress(40, "clean: filter", "parts", sink=lines.append) as bar:
        for _ in range(40):
            bar.advance(1, docs=85, bytes=30_000)
    assert len(lines) == 10  # at 10 %, 20 % … 90 %, then the last line
    assert re.fullmatch(r"clean: filter 4/40 parts, 340 docs, [\d.]+ [kMG]?B/s, ETA \d:\d\d:\d\d", lines[0])
    assert re.fullmatch(r"clean: filter 40/40 parts, 3,400 docs, [\d.]+ [kMG]?B/s, done in \d:\d\d:\d\d", lines[-1])


def test_a_short_task_prints_nothing_in_plain_mode(monkeypatch):
    monkeypatch.setenv(prog.ENV, "plain")
    monkeypatch.delenv("GPT2JA_PROGRESS_DELAY_S", raising=False)
    lines: list[str] = []
    with prog.progress(10, "clean: dedup", "docs", sink=lines.append) as bar:
        bar.advance(10)  # done within the first 2 s: a fast step (or a fast one-line error) says nothing more
    assert lines == []


def test_an_unknown_length_says_what_runs_and_off_prints_nothing(monkeypatch):
    monkeypatch.setenv(prog.ENV, "plain")
    monkeypatch.setenv("GPT2JA_PROGRESS_DELAY_S", "0")
    lines: list[str] = []
    with prog.progress(None, "tokenizer: sentencepiece training", "steps", sink=lines.append) as bar:
        bar.update(info="one C++ call: no progress of its own")
    assert lines == [lines[0]] and lines[0].startswith(
        "tokenizer: sentencepiece training one C++ call: no progress of its own, done in 0:00:0"
    )
    monkeypatch.setenv(prog.ENV, "0")
    lines.clear()
    with prog.progress(3, "shards: encode", "shards", sink=lines.append) as bar:
        bar.advance(3)
    assert lines == []


def test_parts_advance_in_the_parent_as_each_finishes():
    from gpt2ja.infra.parallel import map_with_progress, pool_map

    seen: list[int] = []
    got = map_with_progress(pool_map(2), len, ["ab", "c", "def"], ["a", "b", "c"], seen.append)
    assert got == [2, 1, 3] and sorted(seen) == [1, 2, 3]
    seen.clear()  # a mapper that cannot say when each finishes (Prefect, Dask): all at the end, in order
    got = map_with_progress(lambda fn, items, names: [fn(i) for i in items], len, ["ab", "c"], ["a", "b"], seen.append)
    assert got == seen == [2, 1]


# ----------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A raw crawl of the mirror's works, its clean corpus and a sentencepiece tokenizer (built in-process)."""
    return mirror_stages(tmp_path_factory.mktemp("progress"), part_docs=4)


@pytest.mark.slow
def test_clean_draws_a_live_bar_on_a_terminal(inputs, tmp_path):
    code, out = on_terminal(gpt2ja("clean", "--in", inputs["raw"], "--out", str(tmp_path / "c"), "--workers", "2"))
    assert code == 0, out[-3000:]
    for desc in ("clean: filter", "clean: dedup", "clean: write"):
        assert_live_bar(out, desc)
    assert re.search(r"100% \d+/\d+ parts, [\d,]+ docs, [\d,]+ kept, [\d.]+ [kMG]?B/s", ANSI.sub("", out))


@pytest.mark.slow
def test_clean_in_a_pipe_prints_plain_periodic_lines(inputs, tmp_path):
    got = in_pipes(gpt2ja("clean", "--in", inputs["raw"], "--out", str(tmp_path / "c"), "--workers", "2"))
    assert got.returncode == 0, got.stderr[-3000:]
    lines = assert_plain_lines(got.stderr, "clean: filter")
    assert len(lines) >= 3  # several parts: a line per tenth, then the last
    assert_plain_lines(got.stderr, "clean: write")
    assert not ANSI.search(got.stdout)


@pytest.mark.slow
def test_tokenizer_training_bars_and_a_spinner_for_sentencepiece(inputs, tmp_path):
    code, out = on_terminal(
        gpt2ja(
            "tokenizer", "train", "--corpus", inputs["clean"], "--vocab-size", "3000", "--out", str(tmp_path / "tok")
        )
    )
    assert code == 0, out[-3000:]
    assert_live_bar(out, "tokenizer: sample")
    assert_live_bar(out, "tokenizer: validation")
    assert "tokenizer: sentencepiece unigram training" in out and "no progress of its own" in out


@pytest.mark.slow
def test_shards_draw_a_live_bar_and_pipes_get_lines(inputs, tmp_path):
    args = (
        "shards",
        "--corpus",
        inputs["clean"],
        "--tokenizer",
        inputs["tokenizer"],
        "--seq-len",
        "32",
        "--workers",
        "2",
    )
    code, out = on_terminal(gpt2ja(*args, "--out", str(tmp_path / "s1")))
    assert code == 0, out[-3000:]
    assert_live_bar(out, "shards: encode")
    assert re.search(r"100% 68/68 shards, [\d,]+ tokens, [\d,]+ examples", ANSI.sub("", out))
    got = in_pipes(gpt2ja(*args, "--out", str(tmp_path / "s2")))
    assert got.returncode == 0, got.stderr[-3000:]
    assert assert_plain_lines(got.stderr, "shards: encode")[-1].startswith("shards: encode 68/68 shards")


def _tiny_run(root: Path) -> Path:
    """An untrained tiny run with the bytes tokenizer."""
    return write_tiny_run(root, randomize=False)


@pytest.mark.slow
def test_eval_draws_a_bar_over_the_windows(tmp_path):
    run = _tiny_run(tmp_path)
    text = tmp_path / "text.txt"
    text.write_text("吾輩は猫である。名前はまだ無い。" * 60, encoding="utf-8")  # 2,880 bytes: ~180 windows
    args = ("eval", "--run", str(run), "--text", str(text), "--prime-chars", "0")
    code, out = on_terminal(gpt2ja(*args))
    assert code == 0, out[-3000:]
    assert_live_bar(out, "eval: score")
    assert re.search(r"100% [\d,]+/[\d,]+ windows", ANSI.sub("", out))
    got = in_pipes(gpt2ja(*args))
    assert got.returncode == 0, got.stderr[-3000:]
    assert_plain_lines(got.stderr, "eval: score")


# ----------------------------------------------------------------------------- the crawl


@pytest.mark.slow
def test_crawl_shows_one_status_line_and_logs_the_details_to_a_file(serve, tmp_path):
    server = serve(MIRROR)
    args = (
        "crawl",
        "aozora",
        "--start-url",
        server.url("/index_pages/person879.html"),
        "--root",
        str(tmp_path),
        "--crawl-id",
        "t",
        "--no-polite",
    )
    code, out = on_terminal(gpt2ja(*args))
    assert code == 0, out[-3000:]
    log = tmp_path / "logs" / "crawl" / "aozora-t.log"
    text = ANSI.sub("", out)
    # the per-page details are in the log, not on the terminal
    assert "drop http_404" not in text and "Overridden settings" not in text and "Deprecat" not in text
    logged = log.read_text(encoding="utf-8")
    assert logged.count("drop http_404") == 373 and "Overridden settings" in logged
    # one live line, redrawn; then the summary with the drops by reason and where the log is
    assert out.count(ERASE_LINE) >= 2 and "crawl aozora" in text
    assert "crawl aozora: dropped by reason: http_404 373" in text
    assert f"crawl aozora: log (every drop, Scrapy's messages): {log}" in text
    assert "12 documents" in text
    manifest = json.loads((tmp_path / "raw" / "aozora" / "t" / "_MANIFEST.json").read_text())
    assert manifest["counts"]["drops"] == {"http_404": 373}
    assert not (tmp_path / "raw" / "aozora" / "t" / "logs").exists()


@pytest.mark.slow
def test_crawl_in_a_pipe_prints_the_periodic_lines(serve, tmp_path):
    server = serve(MIRROR)
    got = in_pipes(
        gpt2ja(
            "crawl",
            "aozora",
            "--start-url",
            server.url("/index_pages/person879.html"),
            "--root",
            str(tmp_path),
            "--crawl-id",
            "p",
            "--no-polite",
            "--progress-interval",
            "0.2",
        )
    )
    assert got.returncode == 0, got.stderr[-3000:]
    assert not ANSI.search(got.stderr) and "drop http_404" not in got.stderr
    lines = [line for line in got.stderr.splitlines() if line.startswith("crawl aozora: ")]
    assert re.fullmatch(r"crawl aozora: \d+ pages, \d+ docs, \d+ dropped, [\d.]+ pages/s", lines[0])
    assert lines[-3].endswith("(closed: finished)")
    assert lines[-2] == "crawl aozora: dropped by reason: http_404 373"
    assert "dropped: http_404 373" in got.stdout

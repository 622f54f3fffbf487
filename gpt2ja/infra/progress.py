"""Progress of a long stage: a live bar on a terminal, periodic plain lines everywhere else.

One helper for every stage (clean, shards, tokenizer training, evaluation, the
crawl's status line)::

    with progress(len(parts), "clean: filter", "parts") as bar:
        for result in finished_parts():          # in the parent: workers never draw
            bar.advance(1, docs=result["docs_in"], bytes=result["bytes"])

Where the output goes decides how it looks (``GPT2JA_PROGRESS`` overrides it):

* ``auto`` (default): a `rich <https://rich.readthedocs.io>`_ bar with counts,
  percentage, rate, elapsed time and ETA, redrawn in place, when stderr is a
  terminal (and ``TERM`` is not ``dumb``); otherwise — a pipe, a file, CI, a
  Prefect flow or task run — plain lines, one every 10 s or every 10 % of the
  total, whichever comes first, plus a last one::

      clean: filter 12/40 parts, 3,400 docs, 1.2 MB/s, ETA 0:00:31

  A task that ends within its first 2 s prints no line at all.

  Inside a Prefect run the lines go to the run's logger (the UI shows them),
  else to stderr. They never hold an ANSI escape.
* ``bar``: the bar even off a terminal; ``plain``: the lines even on one;
  ``off`` (or ``0``): nothing.

A step that reports nothing itself (sentencepiece's C++ trainer) is a
``progress(None, …)``: a spinner with the elapsed time, and in plain mode a line
every 10 s. Progress never fails a stage: a display that cannot be drawn is dropped.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

ENV = "GPT2JA_PROGRESS"
MODES = ("auto", "bar", "plain", "off")
PLAIN_EVERY_S = 10.0  # a plain line at least this often while something runs
# No plain line for a task that ends sooner (as tqdm's ``delay``): a short step, or one that fails
# fast with its one-line error, says nothing more. GPT2JA_PROGRESS_DELAY_S changes it (tests: 0).
PLAIN_DELAY_S = 2.0
PLAIN_EVERY_FRACTION = 0.1  # ... and at every tenth of the total
_OFF_WORDS = ("0", "off", "false", "no", "none")
_warned: set[str] = set()
_live = None  # the rich Progress on screen now (a nested bar joins it as another row)
_live_lock = threading.Lock()
_listeners: list[Callable[[str, int, int | None], None]] = []  # see listening()


@contextlib.contextmanager
def listening(listener: Callable[[str, int, "int | None"], None]) -> Iterator[None]:
    """Call ``listener(desc, done, total)`` at every update of any progress in this process while the block runs.

    How the flows follow a stage that knows nothing of Prefect: the clean and
    shards tasks turn these calls into Prefect progress artifacts
    (:func:`gpt2ja.flows.artifacts.stage_progress`). A listener that raises is dropped.
    """
    _listeners.append(listener)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _listeners.remove(listener)


def _tell(desc: str, done: int, total: int | None) -> None:
    for listener in list(_listeners):
        try:
            listener(desc, done, total)
        except Exception:  # noqa: BLE001 - progress never fails a stage
            with contextlib.suppress(ValueError):
                _listeners.remove(listener)


def mode(stream=None) -> str:
    """``"bar"``, ``"plain"`` or ``"off"``: how progress shows now (``GPT2JA_PROGRESS``, then the stream)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value in _OFF_WORDS:
        return "off"
    if value in ("plain", "bar"):
        return value
    if value != "auto" and value not in _warned:
        _warned.add(value)
        print(f"warning: {ENV}={value!r} is not one of {', '.join(MODES)}; using auto", file=sys.stderr)
    if _prefect_logger() is not None:
        return "plain"
    stream = sys.stderr if stream is None else stream
    return "bar" if _isatty(stream) and os.environ.get("TERM", "") != "dumb" else "plain"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # a closed or replaced stream is not a terminal
        return False


def _prefect_logger():
    """The run logger when this code runs inside a Prefect flow or task run, else None (Prefect never imported)."""
    if "prefect" not in sys.modules:
        return None
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return None
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - progress must never break a stage
        return None


def _delay_s() -> float:
    try:
        return max(0.0, float(os.environ.get("GPT2JA_PROGRESS_DELAY_S", PLAIN_DELAY_S)))
    except ValueError:
        return PLAIN_DELAY_S


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _size_rate(bytes_per_s: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.1f} {unit}/s"
    return f"{bytes_per_s:.0f} B/s"


class Progress:
    """One tracked task: ``advance``/``update`` it; the display (bar, lines or nothing) follows.

    ``total`` None is a task of unknown length (a spinner, elapsed time). Named
    counters (``docs=…``, ``examples=…``) are shown beside the count; one named
    ``bytes`` is shown as a throughput (MB/s) instead.
    """

    def __init__(
        self, total: int | None, desc: str, unit: str, how: str, sink: Callable[[str], None] | None = None
    ) -> None:
        self.total, self.desc, self.unit, self.how = total, desc, unit, how
        self.done = 0
        self.counts: dict[str, int] = {}
        self.info = ""
        self.started = time.monotonic()
        self._sink = sink
        self._lock = threading.Lock()
        self._last_line = self.started
        self._next_fraction = PLAIN_EVERY_FRACTION
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._rich = None
        self._task = None
        self._owner = False
        self._pushed = 0.0
        self._finished: float | None = None
        self._delay = _delay_s()
        self._said = False  # a plain line was printed (then the last one is printed too)

    # ---------------------------------------------------------------- updates

    def advance(self, n: int = 1, **counts: int) -> None:
        """``n`` more units done; ``counts`` add to the named counters."""
        with self._lock:
            self.done += n
            for k, v in counts.items():
                self.counts[k] = self.counts.get(k, 0) + v
        self._changed()

    def update(
        self, completed: int | None = None, *, total: int | None = None, info: str | None = None, **counts: int
    ) -> None:
        """Set absolute values: units done, the total, a short note, counters."""
        with self._lock:
            if completed is not None:
                self.done = completed
            if total is not None:
                self.total = total
            if info is not None:
                self.info = info
            self.counts.update(counts)
        self._changed(force=True)

    def _changed(self, force: bool = False) -> None:
        if _listeners:
            _tell(self.desc, self.done, self.total)
        complete = self.total is not None and self.done >= self.total
        if complete != (self._finished is not None):
            self._finished = time.monotonic() if complete else None
        if self.how == "bar":
            now = time.monotonic()
            if force or now - self._pushed >= 0.1:  # a cheap advance: rich is told ten times a second at most
                self._pushed = now
                self._push()
        elif self.how == "plain":
            self._maybe_line()

    # ---------------------------------------------------------------- text

    def elapsed(self) -> float:
        """Seconds since the start; frozen once the total is reached (a pool's shutdown is not work)."""
        return (self._finished or time.monotonic()) - self.started

    def eta(self) -> float | None:
        if not self.total or not self.done or self.done >= self.total:
            return None
        return self.elapsed() * (self.total - self.done) / self.done

    def numbers(self) -> str:
        """``12/40 parts, 3,400 docs, 1.2 MB/s``: the counts and a rate (no times)."""
        if self.total is not None:
            parts = [f"{self.done:,}/{self.total:,} {self.unit}"]
        else:  # a spinner: its count only once there is one
            parts = [f"{self.done:,} {self.unit}"] if self.done else []
        parts += [f"{v:,} {k}" for k, v in self.counts.items() if k != "bytes"]
        seconds = max(self.elapsed(), 1e-9)
        if "bytes" in self.counts:
            parts.append(_size_rate(self.counts["bytes"] / seconds))
        elif self.done:
            key, value = next(iter((k, v) for k, v in self.counts.items()), (self.unit, self.done))
            rate = value / seconds
            parts.append(f"{rate:,.1f} {key}/s" if rate < 100 else f"{rate:,.0f} {key}/s")
        return ", ".join(parts)

    def line(self, final: bool = False) -> str:
        """The plain line: ``clean: filter 12/40 parts, 3,400 docs, 1.2 MB/s, ETA 0:00:31``."""
        parts = [p for p in (self.numbers(), self.info) if p]
        eta = self.eta()
        if final:
            parts.append(f"done in {_duration(self.elapsed())}")
        elif eta is not None:
            parts.append(f"ETA {_duration(eta)}")
        else:
            parts.append(f"{_duration(self.elapsed())} elapsed")
        return f"{self.desc} " + ", ".join(parts)

    def bar_text(self) -> str:
        """What the bar shows right of itself: percentage, counts, rate, elapsed and ETA."""
        eta = self.eta()
        counts = ", ".join(p for p in (self.numbers(), self.info) if p)
        parts = [
            f"{100 * self.done / self.total:3.0f}%" if self.total else "",
            counts,
            _duration(self.elapsed()),
            f"ETA {_duration(eta)}" if eta is not None else "",
        ]
        return " ".join(p for p in parts if p)

    # ---------------------------------------------------------------- plain lines

    def _emit(self, text: str) -> None:
        try:
            if self._sink is not None:
                self._sink(text)
            else:
                print(text, file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - a closed stream or a broken logger: the stage goes on
            pass

    def _maybe_line(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self.started < self._delay:
                return
            fraction = self.done / self.total if self.total else 0.0
            due = now - self._last_line >= PLAIN_EVERY_S
            if self.total and fraction >= self._next_fraction and self.done < self.total:
                due = True
                while self._next_fraction <= fraction:
                    self._next_fraction += PLAIN_EVERY_FRACTION
            if not due:
                return
            self._last_line = now
            self._said = True
            text = self.line()
        self._emit(text)

    def _tick(self) -> None:
        """A line every PLAIN_EVERY_S even when nothing advances (a long C++ call, a slow part)."""
        while not self._stop.wait(1.0):
            if time.monotonic() - self._last_line >= PLAIN_EVERY_S:
                self._maybe_line()

    # ---------------------------------------------------------------- the bar

    def _push(self) -> None:
        if self._rich is None:
            return
        try:
            self._rich.update(self._task, completed=self.done, total=self.total)
        except Exception:  # noqa: BLE001
            pass

    def _start_bar(self) -> None:
        global _live
        from rich.console import Console
        from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, TextColumn
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class _Bar(BarColumn):
            def render(self, task):  # a task of unknown length has its spinner, not a pulsing bar
                return Text("") if task.total is None else super().render(task)

        class _Numbers(ProgressColumn):
            def render(self, task) -> Text:
                tracker = task.fields.get("tracker")
                return Text(tracker.bar_text() if tracker is not None else "", no_wrap=True, overflow="ellipsis")

        with _live_lock:
            if _live is None:
                console = Console(file=sys.stderr, force_terminal=True, force_interactive=True)
                _live = RichProgress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    _Bar(bar_width=24),
                    _Numbers(),
                    console=console,
                    refresh_per_second=8,
                )
                _live.start()
                self._owner = True
            self._rich = _live
            self._task = _live.add_task(self.desc, total=self.total, tracker=self)

    def _stop_bar(self) -> None:
        global _live
        self._push()
        if self._owner:
            with _live_lock:
                try:
                    self._rich.stop()
                finally:
                    _live = None

    # ---------------------------------------------------------------- lifetime

    def start(self) -> "Progress":
        if self.how == "bar":
            try:
                self._start_bar()
            except Exception:  # noqa: BLE001 - no bar can be drawn here: plain lines instead
                self.how = "plain"
        if self.how == "plain":
            self._ticker = threading.Thread(target=self._tick, name=f"progress {self.desc}", daemon=True)
            self._ticker.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self.how == "bar":
            with contextlib.suppress(Exception):
                self._stop_bar()
        elif self.how == "plain" and (self._said or time.monotonic() - self.started >= self._delay):
            self._emit(self.line(final=True))


@contextlib.contextmanager
def progress(
    total: int | None, desc: str, unit: str = "items", *, sink: Callable[[str], None] | None = None
) -> Iterator[Progress]:
    """Track one task of ``total`` ``unit`` (None: unknown length) while the block runs; see the module docstring.

    ``sink`` receives the plain lines instead of stderr (a logger's ``info``).

    Example::

        with progress(3, "shards", "shards") as bar:
            for _ in range(3):
                bar.advance(1, examples=120)
    """
    how = mode()
    if sink is None and how == "plain":
        logger = _prefect_logger()
        sink = logger.info if logger is not None else None
    tracker = Progress(total, desc, unit, how, sink).start()
    try:
        yield tracker
    finally:
        tracker.close()

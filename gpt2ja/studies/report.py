"""Report pieces shared by the studies: Markdown tables, CSV, deterministic PNGs, the machine.

Everything written here is a function of its inputs only (no dates, no
matplotlib version stamp in the PNGs), so writing a report again from the same
artifacts gives byte-identical files.

Example::

    table(["tokenizer", "bits/char"], [["sp16k", 4.21]], formats={"bits/char": ".3f"})
    write_csv("docs/studies/vocab.csv", rows, columns)
    save_png(fig, "docs/studies/vocab-bpc.png")
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
from collections.abc import Iterable, Sequence
from typing import Any

from gpt2ja.infra import storage


def fmt(value: Any, spec: str = "") -> str:
    """A table cell: ``-`` for None/NaN, ``format(value, spec)`` otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if spec else str(value)


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    formats: dict[str, str] | None = None,
    align: dict[str, str] | None = None,
) -> str:
    """A GitHub Markdown table; ``formats`` maps a column to a format spec, ``align`` to ``l``/``r``."""
    formats, align = formats or {}, align or {}
    out = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if align.get(c, "r") == "r" else ":---" for c in columns) + "|",
    ]
    for row in rows:
        cells = [fmt(v, formats.get(c, "")).replace("|", "\\|") for c, v in zip(columns, row)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV (header + rows, ``\\n`` line ends); floats written with ``repr`` precision, None as empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buf.getvalue()


def write_csv(uri: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    storage.write_text(uri, csv_text(rows, columns))


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes without the Software stamp (no date is written either): reproducible."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save_png(fig, uri: str) -> None:
    import matplotlib.pyplot as plt

    storage.write_bytes(uri, png_bytes(fig))
    plt.close(fig)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed). Plot labels stay ASCII: no CJK font is assumed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine(with_tensorflow: bool = True) -> str:
    """One line about this machine: CPU, cores, memory, accelerators, OS, Python and TensorFlow versions.

    Cores are those this process may use (``os.sched_getaffinity``), which is
    what a container or a CPU quota actually gives.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = _memory_gib()
    parts = [f"{_cpu_name()}, {cores} cores" + (f", {mem:.0f} GiB memory" if mem else "")]
    if with_tensorflow:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            parts.append(f"{len(gpus)} × {details.get('device_name', 'GPU')}")
        else:
            parts.append("no GPU")
        parts.append(f"TensorFlow {tf.__version__}")
    parts.append(f"{platform.system()} {platform.release().split('-')[0]}, Python {platform.python_version()}")
    return "; ".join(parts)


def duration(seconds: float | None) -> str:
    """``3725`` → ``"1 h 02 min"``, ``95`` → ``"1 min 35 s"``, ``7.4`` → ``"7.4 s"``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"

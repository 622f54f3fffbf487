"""What both studies share: their error type, config loading with one-line errors, progress lines.

Example::

    cfg = load_config("configs/studies/vocab.yaml", VocabStudyConfig)   # StudyError on a bad file or field
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from gpt2ja.infra import yamlconfig
from gpt2ja.infra.errors import Gpt2jaError

M = TypeVar("M", bound=BaseModel)


class StudyError(Gpt2jaError, ValueError):
    """A study that cannot run: one line naming the thing (file, field, artifact) and the fix."""


def say(line: str) -> None:
    """The default progress sink: one line on stderr (stdout stays for results)."""
    print(line, file=sys.stderr, flush=True)


def validate(model: type[M], data: object, where: str) -> M:
    """``model`` from a parsed mapping; the first problem becomes ``config {where}: {field}: {message}``."""
    return yamlconfig.validate(
        model,
        data,
        where,
        StudyError,
        expected="see configs/studies/ for examples",
        unknown_hint="check its spelling against configs/studies/",
    )


def load_config(path: str | Path, model: type[M], overrides: dict | None = None) -> M:
    """Read the YAML file ``path`` and validate it as ``model`` (``overrides`` win over the file's values)."""
    data = yamlconfig.read_yaml(path, StudyError, example="configs/studies/vocab.yaml or configs/studies/sampling.yaml")
    if isinstance(data, dict) and overrides:
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return validate(model, data, str(path))


def require_unique(names: list[str], what: str) -> None:
    """``ValueError`` naming the repeated ones when ``names`` (of ``what``: "method", "tokenizer") repeat."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")


def slug(text: str) -> str:
    """A file-name-safe form of a label.

    >>> slug("top-p 0.95"), slug("top-k 40, t=0.7")
    ('top-p-0.95', 'top-k-40-t0.7')
    """
    out = []
    for ch in text.strip().lower():
        if ch.isascii() and (ch.isalnum() or ch in "._"):
            out.append(ch)
        elif ch in " -,/":
            if out and out[-1] != "-":
                out.append("-")
    return "".join(out).strip("-") or "x"


def check_shape(preset: str, batch_tokens: int, micro_batch: int, seq_len: int, who: str = "") -> None:
    """``ValueError`` (prefixed by ``who``) for an unknown preset or a batch that micro-batches do not fill."""
    from gpt2ja.model.presets import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"{who}unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    per_micro = micro_batch * seq_len
    if batch_tokens % per_micro:
        near = max(1, round(batch_tokens / per_micro)) * per_micro
        raise ValueError(
            f"{who}batch_tokens {batch_tokens} is not a multiple of micro_batch × seq_len = {per_micro}; use {near}"
        )

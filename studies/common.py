"""What both studies share: their error type, config loading with one-line errors, progress lines.

Example::

    cfg = load_config("configs/studies/vocab.yaml", VocabStudyConfig)   # StudyError on a bad file or field
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class StudyError(ValueError):
    """A study that cannot run: one line naming the thing (file, field, artifact) and the fix."""


def say(line: str) -> None:
    """The default progress sink: one line on stderr (stdout stays for results)."""
    print(line, file=sys.stderr, flush=True)


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def validate(model: type[M], data: object, where: str) -> M:
    """``model`` from a parsed mapping; the first problem becomes ``config {where}: {field}: {message}``."""
    if not isinstance(data, dict):
        raise StudyError(f"config {where}: expected a mapping of settings at the top level, "
                         f"got {type(data).__name__}; see configs/studies/ for examples")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            msg = "required but missing"
        elif first["type"] == "extra_forbidden":
            msg = "unknown setting (check its spelling against configs/studies/)"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        field = f"{_where(first['loc'])}: " if first["loc"] else ""  # a whole-config rule names its fields itself
        raise StudyError(f"config {where}: {field}{msg}{more}") from None


def load_config(path: str | Path, model: type[M], overrides: dict | None = None) -> M:
    """Read the YAML file ``path`` and validate it as ``model`` (``overrides`` win over the file's values)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise StudyError(f"config {path}: no such file; pass --config with a study YAML "
                         "(configs/studies/vocab.yaml or configs/studies/sampling.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise StudyError(f"config {path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
    except UnicodeDecodeError:
        raise StudyError(f"config {path}: not UTF-8 text; save it as UTF-8") from None
    if data is None:
        data = {}
    if isinstance(data, dict) and overrides:
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return validate(model, data, str(path))


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

"""YAML settings files read into pydantic models, every problem as one line.

The pipeline config, the serve config and the two study configs all go through here, so a missing
file, a YAML syntax error, a list where a mapping belongs and a bad field read the same everywhere:
``{label} {path}: {what}; {what to do}``. Each caller passes its own error class and example file.

Example::

    data = read_yaml("configs/demo.yaml", ConfigError, example="configs/demo.yaml")
    cfg = validate(PipelineConfig, data, "configs/demo.yaml", ConfigError, expected="root, corpus, crawl, ...")
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path, error: type[Exception], *, example: str, label: str = "config") -> object:
    """The parsed YAML document of ``path`` (``{}`` for an empty file); a problem raises ``error``."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{label} {path}: file not found; give a YAML file such as {example}") from None
    except UnicodeDecodeError:
        raise error(f"{label} {path}: not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise error(f"{label} {path}: cannot read it ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(
            f"{label} {path}: not valid YAML{at}: {getattr(err, 'problem', None) or err}; fix the file"
        ) from None
    return {} if data is None else data


def read_section(
    path: str | Path, section: str, error: type[Exception], *, example: str, allowed: Iterable[str] = ()
) -> dict:
    """The ``section:`` mapping of a YAML file (e.g. ``train:`` for ``gpt2ja train --config``).

    Any other top-level key must be one of ``allowed`` (the sections of a
    pipeline config, so that one file serves both); a misspelt section or an
    empty file is an error, never a run on defaults.
    """
    data = read_yaml(path, error, example=example)
    if not isinstance(data, dict):
        raise error(
            f"config {path}: expected a mapping with a `{section}:` section at the top level, got {type(data).__name__}"
        )
    unknown = sorted(str(k) for k in set(data) - set(allowed) - {section})
    if unknown:
        raise error(
            f"config {path}: unknown section {', '.join(unknown)} (this command reads `{section}:`); check its spelling"
        )
    if not isinstance(data.get(section), dict) or not data[section]:
        raise error(
            f"config {path}: no `{section}:` settings (an empty file would run on defaults); add them, as in {example}"
        )
    return data[section]


def apply_overrides(data: dict, items: Iterable[str], error: type[Exception]) -> dict:
    """``data`` with each ``key.sub=value`` of ``items`` set (values read as YAML: numbers, lists, true…)."""
    import yaml

    out = dict(data)
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise error(f"--set {item}: write it as key=value, e.g. --set split.validation_fraction=0.1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = out
        *parents, last = key.strip().split(".")
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[last] = value
    return out


def field_path(loc: tuple) -> str:
    """pydantic's error location as a dotted path with list indices: ``tokenizers[2].vocab_size``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _got(e: dict) -> str:
    return f", got {e['input']!r}" if "input" in e and not isinstance(e["input"], dict) else ""


# pydantic's messages ("Input should be greater than or equal to 1") in this project's words
_OUR_WORDS = {
    "missing": lambda e: "required but missing",
    "greater_than_equal": lambda e: f"must be at least {e['ctx']['ge']}{_got(e)}",
    "greater_than": lambda e: f"must be more than {e['ctx']['gt']}{_got(e)}",
    "less_than_equal": lambda e: f"must be at most {e['ctx']['le']}{_got(e)}",
    "less_than": lambda e: f"must be less than {e['ctx']['lt']}{_got(e)}",
    "int_parsing": lambda e: f"must be a whole number{_got(e)}",
    "int_from_float": lambda e: f"must be a whole number{_got(e)}",
    "float_parsing": lambda e: f"must be a number{_got(e)}",
    "bool_parsing": lambda e: f"must be true or false{_got(e)}",
    "literal_error": lambda e: f"must be one of {e['ctx']['expected']}{_got(e)}",
    "string_type": lambda e: f"must be text{_got(e)}",
    "list_type": lambda e: f"must be a list{_got(e)}",
    "dict_type": lambda e: f"must be a mapping of settings{_got(e)}",
    "too_short": lambda e: f"must hold at least {e['ctx']['min_length']} item(s){_got(e)}",
}


def first_problem(err: ValidationError, *, unknown_hint: str = "check its spelling") -> str:
    """The first validation error as ``field: message`` (and how many more there are)."""
    first = err.errors()[0]
    msg = _OUR_WORDS.get(first["type"], lambda e: e["msg"].removeprefix("Value error, "))(first)
    if first["type"] == "extra_forbidden":
        msg = f"unknown setting ({unknown_hint})"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    field = field_path(first["loc"])
    return f"{field + ': ' if field else ''}{msg}{more}"  # a whole-model rule names its fields itself


def validate(
    model: type[M],
    data: object,
    where: str | Path,
    error: type[Exception],
    *,
    expected: str,
    label: str = "config",
    unknown_hint: str = "check its spelling",
) -> M:
    """``model`` from a parsed document; a non-mapping or the first bad field raises ``error`` (one line)."""
    if not isinstance(data, dict):
        raise error(
            f"{label} {where}: expected a mapping of settings ({expected}) at the top level, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise error(f"{label} {where}: {first_problem(err, unknown_hint=unknown_hint)}") from None

"""The ``gpt2ja`` command line.

The stage commands (crawl …, clean, tokenizer train, shards, train, eval, generate,
export …) are generated from :data:`gpt2ja.registry.COMMANDS`: their options come from
the stage's config model, and each takes ``--config`` and ``--set``. The other commands
are written here. Every command is a thin layer over a package function; heavy libraries
(Scrapy, TensorFlow, MeCab) are imported inside the command that needs them,
so ``gpt2ja --help`` is instant. A bad argument gets one line that names it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from gpt2ja import registry  # pydantic models only: each stage imports its libraries when it runs

# `gpt2ja --help` lists the commands in the order a pipeline runs them, then the tools around it
COMMAND_ORDER = (
    "crawl",
    "clean",
    "tokenizer",
    "shards",
    "train",
    "eval",
    "generate",
    "score",
    "export",
    "run",
    "demo",
    "serve",
    "serve-mirror",
    "study",
    "show",
    "extract",
)


class PipelineOrder(TyperGroup):
    """A command group that lists its commands in :data:`COMMAND_ORDER` (click sorts them by name)."""

    def list_commands(self, ctx) -> list[str]:
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: (rank.get(name, len(rank)), name))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"gpt2ja {version('gpt2ja')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("gpt2ja (not installed: pip install -e .)")
        raise typer.Exit()


app = typer.Typer(
    name="gpt2ja",
    cls=PipelineOrder,
    help="Train Japanese GPT-2 models end to end: crawl → clean → tokenizer → TFRecord shards → "
    "train → evaluate / generate / export. Every stage reads and writes artifacts under a run root "
    "(a local directory or gs://bucket/prefix).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", is_eager=True, callback=_version, help="Print the version and exit."
    ),
) -> None:
    """The group's own options (its help text is the Typer's)."""


crawl_app = typer.Typer(
    help="Collect raw Japanese text into {root}/raw/{source}/{crawl_id}/.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(crawl_app, name="crawl")
tokenizer_app = typer.Typer(
    help="Train and inspect tokenizers ({root}/tokenizers/{name}/).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(tokenizer_app, name="tokenizer")
from gpt2ja.studies.cli import app as study_app  # noqa: E402 - `gpt2ja study vocab|sampling` (studies/)

app.add_typer(study_app, name="study")

ROOT = typer.Option("data", "--root", help="Run root: a local directory or gs://bucket/prefix.")
SET = typer.Option(
    None,
    "--set",
    help="Any setting without a flag, as key=value (dotted for nested ones, "
    "e.g. split.validation_fraction=0.1); repeat for several.",
)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _settings(model, section: str, config: Optional[Path], sets: list[str], given: dict, *, pick: str | None = None):
    """The stage's config model from (in rising priority) its ``--config`` section, ``--set`` items and flags.

    Every default lives in the model; unknown sections and settings are errors. ``pick``: the section may
    be a list (a pipeline config's ``crawl:``), of which the one entry with this ``source`` is read.
    """

    where = str(config) if config else "the command line"
    data = _config_section(config, section, pick) if config else {}
    data = _layered(data, sets, given)
    return _validated(model, section, where, data)


def _config_section(config: Path, section: str, pick: str | None) -> dict:
    """The ``section:`` settings of a YAML file; of a list section, the one entry whose ``source`` is ``pick``."""
    from gpt2ja.flows.config import ConfigError, PipelineConfig
    from gpt2ja.infra import yamlconfig

    if pick is not None:
        data = yamlconfig.read_yaml(config, ConfigError, example="configs/demo.yaml")
        entries = data.get(section) if isinstance(data, dict) else None
        if isinstance(entries, list):
            found = [e for e in entries if isinstance(e, dict) and e.get("source") == pick]
            if len(found) != 1:
                raise ConfigError(
                    f"config {config}: {len(found)} `{section}:` entries have source {pick}; this command reads one"
                )
            return dict(found[0])
    return yamlconfig.read_section(
        config, section, ConfigError, example="configs/demo.yaml", allowed=PipelineConfig.model_fields
    )


def _layered(data: dict, sets: list[str] | None, given: dict) -> dict:
    """``data`` with the ``--set`` items applied, then the flags given (None: not given)."""
    from gpt2ja.flows.config import ConfigError
    from gpt2ja.infra import yamlconfig

    data = yamlconfig.apply_overrides(data, sets or [], ConfigError)
    data.update({k: v for k, v in given.items() if v is not None})
    return data


def _validated(model, section: str, where: str, data: dict):
    from gpt2ja.flows.config import ConfigError
    from gpt2ja.infra import yamlconfig

    return yamlconfig.validate(
        model, data, where, ConfigError, expected=f"the {section} settings", label=f"{section} settings from"
    )


# ----------------------------------------------------------------- the stage commands, from gpt2ja.registry


class UsageError(registry.CommandError):
    """A stage command without a setting it needs (exit status 2, as click's usage errors)."""

    exit_code = 2


def _cli_type(annotation):
    """The type a flag reads for a field of this annotation; None where only ``--set`` can give it."""
    import types
    from typing import Literal, Union, get_args, get_origin

    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        return _cli_type(kept[0]) if len(kept) == 1 else None
    if origin is Literal:
        return type(args[0]) if len({type(a) for a in args}) == 1 else None
    if annotation in (str, int, float, bool, Path):
        return annotation
    if origin is list and len(args) == 1 and _cli_type(args[0]) in (str, int, float):
        return list[_cli_type(args[0])]
    return None


def _shown_default(field) -> str | bool:
    """The model's default as ``--help`` shows it (False: none to show)."""
    if field.is_required():
        return False
    value = field.get_default(call_default_factory=True)
    if value is None or value in ([], {}, "", [""]):
        return False
    if field.default_factory is not None and not isinstance(value, list):
        return False  # of this machine or day (workers: the cores, crawl_id: the date): the help says which
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)


def _help(text: str, shown: str | bool) -> str:
    """A flag's help: its text as one sentence, then the model's default (the flag's own default is None)."""
    text = text.strip().rstrip(".") + "."
    first = text.split(" ", 1)[0]
    if not any(c.isdigit() or c in ":_/" for c in first):  # a sentence, not a name (bf16, web:, aozora:)
        text = text[:1].upper() + text[1:]
    return f"{text}  [default: {shown}]" if shown is not False else text


def _stage_command(command: registry.Command):
    """The typer function of a stage command: one parameter per flag, then ``--config`` and ``--set``."""
    import inspect

    fields = command.model.model_fields
    params, annotations = [], {}
    for flag in command.flags:
        field = fields[flag.field]
        kind = flag.kind or _cli_type(field.annotation)
        if kind is None:
            raise TypeError(f"{command.name}: field {flag.field} cannot be a flag; leave it to --set")
        description = _help(flag.help or field.description or flag.field, _shown_default(field))
        if flag.argument:
            default = typer.Argument(None, help=description, show_default=False)
        else:
            default = typer.Option(None, *flag.names, help=description, show_default=False)
        annotations[flag.field] = Optional[kind]
        params.append(inspect.Parameter(flag.field, inspect.Parameter.KEYWORD_ONLY, default=default))
    annotations["config"] = Optional[Path]
    params.append(
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--config",
                help=f"YAML with a `{command.section}:` section (any {command.model.__name__} field); "
                "a pipeline config serves too.",
            ),
        )
    )
    annotations["sets"] = Optional[list[str]]
    params.append(inspect.Parameter("sets", inspect.Parameter.KEYWORD_ONLY, default=SET))

    def run(**values) -> None:
        config, sets = values.pop("config"), values.pop("sets")
        given = dict(command.fixed)
        for flag in command.flags:
            value = values[flag.field]
            if value == [] or value == ():  # a list flag not given
                value = None
            if value is not None and flag.convert is not None:
                value = flag.convert(value)
            given[flag.field] = value
        pick = command.path[-1] if command.section == "crawl" else None
        where = str(config) if config else "the command line"
        data = _layered(_config_section(config, command.section, pick) if config else {}, sets, given)
        if pick is not None and "source" not in fields:  # a pipeline crawl entry names its source
            data.pop("source", None)
        for flag in command.flags:
            if (flag.required or fields[flag.field].is_required()) and data.get(flag.field) in (None, []):
                what = (
                    f"argument '{flag.field.upper()}'" if flag.argument else f"option '{flag.names[0].split('/')[0]}'"
                )
                raise UsageError(
                    f"Missing {what} (or {flag.field} in --config or --set); see 'gpt2ja {command.name} --help'"
                )
        command.run(_validated(command.model, command.section, where, data))

    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = annotations
    run.__doc__ = command.help
    run.__name__ = "_".join(command.path).replace("-", "_")
    return run


@tokenizer_app.command("encode")
def tokenizer_encode(
    tokenizer: str = typer.Argument(..., help="A tokenizer directory."),
    text: str = typer.Argument(..., help="The text to encode."),
) -> None:
    """Show how a tokenizer splits a text: ids and pieces."""
    from gpt2ja.tokenization.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer)
    ids = tok.encode(text)
    print(" ".join(str(i) for i in ids))
    # Byte-fallback tokens are parts of one character: show each character once, with its token count.
    pieces, pending = [], []
    for i in ids:
        pending.append(i)
        piece = tok.decode(pending)
        if "\ufffd" not in piece or len(pending) == 4:
            pieces.append(piece if len(pending) == 1 else f"{piece}({len(pending)} bytes)")
            pending = []
    print(" | ".join(p.replace("\n", "\\n") or "∅" for p in pieces))
    print(f"{len(text)} characters, {len(ids)} tokens, {len(text) / max(1, len(ids)):.2f} characters per token")


@app.command("convert-checkpoints")
def convert_checkpoints(
    run: str = typer.Option(..., "--run", help="A local run directory with TensorFlow checkpoints (ckpt-N.index)."),
) -> None:
    """Write the newest tf.train.Checkpoint of a run made by an older gpt2ja in the format both backends read
    (checkpoints/ckpt-N.npz and its index); the TensorFlow files stay beside it."""
    from gpt2ja.model import backend, checkpoint, runs

    backend.use("tensorflow")  # the old files are read by TensorFlow itself
    from gpt2ja.infra import storage
    from gpt2ja.model.train import TrainConfig

    if storage.is_gcs(run):
        _fail(f"{run}: convert a local copy of the run (gsutil -m cp -r), then copy it back")
    hparams = runs.read_hparams(run)
    model_cfg = runs.model_config(hparams, run_uri=f"run {run}")
    train_cfg = None
    if hparams.get("train"):
        train_cfg = TrainConfig.model_validate({**hparams["train"], "backend": "tensorflow"})
    seq_len = (hparams.get("data") or {}).get("seq_len")
    per_step = train_cfg.batch_tokens // seq_len if train_cfg and seq_len else None
    checkpoint.convert_tf_run(run, model_cfg, train_cfg, examples_per_step=per_step)


@app.command()
def score(
    text: str = typer.Argument(..., help="The text to score."),
    run: str = typer.Option(..., "--run", help="A run directory."),
) -> None:
    """Per-token log-probabilities of a text and their total."""
    from gpt2ja.model import backend, runs

    backend.use(None)  # before any model code imports Keras
    from gpt2ja.model.evaluate import score as score_text

    loaded = runs.load_run(run)
    got = score_text(loaded.model, loaded.tokenizer, text)
    for piece, logprob in got.tokens:
        print(f"{logprob:9.3f}  {piece!r}")
    print(f"total {got.total:.3f} nats = {got.bits:.2f} bits; {got.bits / max(1, len(text)):.3f} bits per character")


export_app = typer.Typer(
    help="Export a trained run (Hugging Face) or a clean corpus (Parquet) to other formats.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(export_app, name="export")


_GROUPS = {"crawl": crawl_app, "tokenizer": tokenizer_app, "export": export_app}
for _command in registry.COMMANDS:
    _group = _GROUPS[_command.path[0]] if len(_command.path) > 1 else app
    _group.command(_command.path[-1])(_stage_command(_command))


@app.command("run")
def run_pipeline(
    config: Path = typer.Argument(..., help="A pipeline YAML, e.g. configs/pipeline-demo.yaml.", metavar="CONFIG.yaml"),
) -> None:
    """Run the Prefect pipeline of one config: crawl → clean → tokenizer → shards, then train → evaluate →
    export when the config has those sections; finished stages are skipped (no server needed)."""
    from gpt2ja.flows.pipeline import cli_run

    cli_run(str(config))


@app.command()
def extract(path: Path = typer.Argument(..., help="An Aozora .txt, .zip or XHTML .html file.")) -> None:
    """Print the plain UTF-8 text of a local Aozora file (notation, header and footer removed)."""
    from gpt2ja.crawler.extract.aozora import extract_path

    got = extract_path(str(path))
    sys.stdout.write(got.text + "\n")


@app.command()
def show(uri: str = typer.Argument(..., help="An artifact directory (local or gs://).")) -> None:
    """Print an artifact's manifest: stage, counts, drops, files."""
    from gpt2ja.infra.stage import require

    manifest = require(uri, "artifact", "rerun the stage that writes it")
    print(
        json.dumps(
            {k: manifest[k] for k in ("stage", "counts", "timings", "code_version", "created_at") if k in manifest},
            ensure_ascii=False,
            indent=2,
        )
    )
    print(f"{len(manifest.get('files', []))} files, fingerprint {manifest.get('fingerprint', '')[:16]}")


@app.command()
def serve(
    config: Path = typer.Argument(
        Path("configs/serve-demo.yaml"), help="A serve config: the pipeline YAML and the corpus-refresh schedule."
    ),
    port: int = typer.Option(4200, help="Port of the local Prefect server (127.0.0.1) started when none answers."),
    check: bool = typer.Option(False, "--check", help="Build the deployments and list them; start nothing."),
) -> None:
    """Serve the Prefect deployments (scheduled corpus refresh, pipeline, train and each stage) until Ctrl-C.

    Uses PREFECT_API_URL when it answers; otherwise starts a Prefect server (SQLite) on
    127.0.0.1 and stops it again on Ctrl-C. Analytics are off.
    """
    from gpt2ja.flows.deployments import cli_serve

    cli_serve(str(config), port=port, check=check)


@app.command("serve-mirror")
def serve_mirror(
    directory: Path = typer.Argument(Path("examples/aozora-mirror"), help="The folder to serve."),
    port: int = typer.Option(8000, help="Port on 127.0.0.1."),
) -> None:
    """Serve a local site mirror on 127.0.0.1 (for crawling it) until Ctrl-C."""
    import time

    from gpt2ja.crawler.mirror import MirrorServer

    if not directory.is_dir():
        _fail(f"{directory} is not a directory")
    with MirrorServer(str(directory), port=port) as server:
        print(f"serving {directory} at {server.url('/')} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@app.command()
def demo(root: str = typer.Option("data/demo", "--root", help="Where the demo writes its artifacts.")) -> None:
    """Run the whole pipeline on the bundled Aozora Bunko slice: crawl it from 127.0.0.1, clean, tokenize,
    shard, train a tiny model for a few minutes, evaluate, sample and export it."""
    from gpt2ja.demo import run_demo

    run_demo(root)


# Option values as people read them (click would print the Python type: `<list[str]>`)
URI_OPTIONS = {
    "root",
    "out",
    "run",
    "data",
    "corpus",
    "tokenizer",
    "init_from",
    "inputs",
    "in_",
    "shards",
    "clean",
    "raw",
    "out_dir",
}
URL_OPTIONS = {"sitemaps", "start_urls"}
METAVARS = {
    "sets": "KEY=VALUE",
    "set": "KEY=VALUE",
    "push_to_hub": "OWNER/NAME",
    "text": "PATH",
    "config": "YAML",
    "prompt": "TEXT",
}
# What people type from other tools' habits, and our name for it: `--lr` is nanoGPT's, `--max-steps` HF's
ALIASES = {
    "--lr": "--learning-rate",
    "--max-steps": "--steps",
    "--max_steps": "--steps",
    "--batch-size": "--micro-batch",
    "--output": "--out",
    "--output-dir": "--out",
    "--out-dir": "--out",
    "--model": "--preset",
    "--warmup": "--warmup-steps",
    "--temp": "--temperature",
    "--topk": "--top-k",
    "--topp": "--top-p",
    "--top_k": "--top-k",
    "--top_p": "--top-p",
    "--vocab": "--vocab-size",
    "--in": "--in",
    "--input": "--in",
    "--seq-length": "--seq-len",
    "--context": "--seq-len",
}


def _metavars(command) -> None:
    """Give every value option of ``command`` (a click command or group, recursively) a readable metavar.

    Duck-typed: typer ≥ 0.20 runs on its own private copy of click, whose classes are not click's.
    """
    for sub in getattr(command, "commands", {}).values():
        _metavars(sub)
    for param in command.params:
        desc = getattr(param, "type_descriptor", None)
        if not hasattr(param, "is_flag") and param.metavar is None and param.name:  # an argument: `PATH`, not `{path}`
            param.metavar = param.name.upper()
            continue
        if getattr(param, "is_flag", True) or param.metavar is not None or desc is None or desc.is_choice:
            continue  # an argument, a flag, a metavar of its own, or choices (typer lists those itself)
        name, kind = param.name or "", param.display_type(None).strip("<>").removeprefix("list[")
        if name in METAVARS:
            param.metavar = METAVARS[name]
        elif name in URI_OPTIONS:
            param.metavar = "URI"
        elif name in URL_OPTIONS:
            param.metavar = "URL"
        elif kind.startswith(("path", "Path", "file")):
            param.metavar = "PATH"
        elif kind.startswith("int"):
            param.metavar = "N"
        elif kind.startswith("float"):
            param.metavar = "X"
        else:
            param.metavar = "TEXT"


def _no_such_option(exc) -> str:
    """click's NoSuchOption in our words, with the closest real option (and the common aliases)."""
    import difflib

    ctx = exc.ctx
    options = sorted(
        {o for p in (ctx.command.params if ctx else []) for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    )
    name = exc.option_name
    guess = ALIASES.get(name.split("=", 1)[0]) if ALIASES.get(name.split("=", 1)[0]) in options else None
    guess = guess or next(iter(difflib.get_close_matches(name, options, n=1, cutoff=0.6)), None)
    guess = guess or next((o for o in options if name.lstrip("-") and name.lstrip("-") in o), None)
    where = f"'{ctx.command_path}'" if ctx else "this command"
    hint = f"; did you mean {guess}?" if guess else ""
    return f"{where} has no option {name}{hint} (see '{ctx.command_path if ctx else 'gpt2ja'} --help')"


INTERRUPTED = "error: interrupted; rerun the same command to resume (finished work is kept)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's errors become one line, not a usage block or a traceback."""
    from gpt2ja.infra.errors import Gpt2jaError

    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["run"], ["demo"]) and "--help" not in args:
        from gpt2ja.infra.lifetime import reap_when_gone

        reap_when_gone()  # Prefect's temporary server must not outlive a killed run
    command = typer.main.get_command(app)
    _metavars(command)
    try:
        rv = command.main(args=args, prog_name="gpt2ja", standalone_mode=False)
    except Gpt2jaError as exc:  # an error for people, from any command: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except (typer.Exit, SystemExit) as exc:
        code = exc.exit_code if isinstance(exc, typer.Exit) else exc.code
        if code == 130:  # Prefect ends a flow run that got Ctrl-C with status 130 itself
            print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(code) from None
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C: what is finished is kept, the rest resumes
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help is the answer
            print(exc.format_message())
            raise SystemExit(0) from None
        if type(exc).__name__ == "NoSuchOption":  # `--lr`: the closest real option, or its name here
            print(f"error: {_no_such_option(exc)}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    if isinstance(rv, int):  # click returns the code of a typer.Exit when not standalone
        if rv == 130:  # typer turns a KeyboardInterrupt (a flow run Prefect ended on Ctrl-C) into Exit(130)
            print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(rv)

"""The run directory: what training writes and what evaluation, generation and export read.

::

    {root}/runs/{run}/
        hparams.json          {"model": ModelConfig, "train": TrainConfig, "data": {...}, ...}
        tokenizer/            a copy of the tokenizer artifact (with its manifest)
        checkpoints/          ckpt-{step}.npz and their index (gpt2ja.model.checkpoint), the last K kept
        metrics.jsonl         one JSON object per logged step (and per validation)
        tensorboard/          TensorBoard event files (gpt2ja.model.summaries; no TensorFlow needed)
        eval.json             written by ``gpt2ja eval``
        eval/, export/        the evaluate and export stages' outputs (each with its own manifest)
        _MANIFEST.json        written last by the train stage (``gpt2ja.infra.stage.run_stage``) when training
                              finishes; it lists only what training writes (:func:`is_training_file`)

A run is self-describing: :func:`load_run` rebuilds the model from
``hparams.json`` (no preset names needed), restores the newest checkpoint and
loads the copied tokenizer. A ``gs://`` run is read through a local cache
directory (only hparams, tokenizer and the newest checkpoint are fetched), and
can be read while it trains: training stages it in another local directory
(:func:`local_dir`) and :class:`gpt2ja.model.run_sync.RunSync` uploads it as it goes.

Example::

    run = load_run("data/runs/demo")
    run.model, run.config, run.tokenizer, run.step
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from gpt2ja.infra import storage
from gpt2ja.model.presets import ModelConfig, ModelError
from gpt2ja.model.train_config import STAGE, TrainConfig, changed_settings

HPARAMS = "hparams.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = "ckpt"
METRICS = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EVAL_JSON = "eval.json"
FORMAT = "gpt2ja-run/1"
#: what training writes into a run directory: files at its top and whole folders
TRAINING_FILES = (HPARAMS, METRICS)
TRAINING_DIRS = (TOKENIZER_DIR, CHECKPOINT_DIR, TENSORBOARD_DIR)
#: each host's data position of a multi-worker run, ``checkpoints/data-worker{i}/``: written by that host
#: straight to the run URI, never by the chief; needed to resume, not listed by the run's manifest
DATA_CHECKPOINT_PREFIX = f"{CHECKPOINT_DIR}/data-worker"


def local_dir(run_uri: str) -> str:
    """Where training writes the run on this machine: the path itself, or a staging directory for a ``gs://`` run."""
    if not storage.is_gcs(run_uri):
        return storage.local_path(run_uri) or run_uri
    digest = hashlib.sha256(run_uri.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "gpt2ja-runs", digest)


def cache_dir(run_uri: str) -> str:
    """Where :func:`fetch` puts a ``gs://`` run's newest checkpoint for reading; the path itself for a local run.

    Not :func:`local_dir`: a reader on the machine that trains the run must not
    write into the directory that training uploads from.
    """
    if not storage.is_gcs(run_uri):
        return local_dir(run_uri)
    return local_dir(run_uri) + "-read"


def is_training_file(rel: str) -> bool:
    """Whether the run-relative path ``rel`` is one training writes itself (the run's manifest lists those).

    Not the run's manifest, not ``eval.json`` or the ``eval/`` and ``export/`` stages' folders (made from
    the finished run), and not the other hosts' data positions (``checkpoints/data-worker{i}/``).
    """
    top, _, below = rel.partition("/")
    if not below:
        return rel in TRAINING_FILES
    return top in TRAINING_DIRS and not rel.startswith(DATA_CHECKPOINT_PREFIX)


def hparams_ref(hparams: dict, run_uri: str, ref: str) -> str:
    """A URI recorded in the run's ``hparams.json``, usable from here.

    Runs written since ``"refs": "relative"`` was added record other artifacts
    relative to the run directory (a run moved with its root keeps its links);
    older runs hold the URI as it was given, returned as-is.

    Example::

        hparams_ref(read_hparams(run), run, hparams["data"]["uri"])   # the shards it was trained on
    """
    if hparams.get("refs") == "relative":
        return storage.resolve_ref(ref, run_uri)
    return ref


def data_uri(hparams: dict, run_uri: str) -> str | None:
    """The shards the run was trained on (see :func:`hparams_ref`), or None when ``hparams.json`` does not say."""
    ref = (hparams.get("data") or {}).get("uri")
    return hparams_ref(hparams, run_uri, ref) if ref else None


def read_hparams(run_uri: str) -> dict:
    """The run's ``hparams.json``; a ModelError naming the run when it is missing or unreadable."""
    uri = storage.join(run_uri, HPARAMS)
    try:
        data = json.loads(storage.read_text(uri))
    except storage.StorageError:
        raise ModelError(
            f"run {run_uri}: no readable {HPARAMS}; is this a run directory written by `gpt2ja train`? Check the URI"
        ) from None
    except json.JSONDecodeError as err:
        raise ModelError(f"run {run_uri}: {HPARAMS} is not valid JSON ({err}); the run is damaged") from None
    if "model" not in data:
        raise ModelError(f'run {run_uri}: {HPARAMS} has no "model" section; the run is damaged')
    return data


def model_config(hparams: dict, *, run_uri: str = "run") -> ModelConfig:
    try:
        return ModelConfig(**hparams["model"])
    except (TypeError, ValueError) as err:
        first = str(err).splitlines()[0]
        raise ModelError(f"{run_uri}: the model in {HPARAMS} is not valid ({first}); the run is damaged") from None


def latest_checkpoint(local_run: str) -> str | None:
    """The newest checkpoint file under ``{local_run}/checkpoints`` (``…/ckpt-1200.npz``), or None.

    A run holding only TensorFlow checkpoints of an older gpt2ja is one CheckpointError (a ModelError) line
    saying how to convert it.
    """
    from gpt2ja.model import checkpoint

    return checkpoint.latest(os.path.join(local_run, CHECKPOINT_DIR))


def checkpoint_step(path: str) -> int:
    """The step number of a checkpoint ``…/ckpt-1200.npz`` → 1200."""
    from gpt2ja.model import checkpoint

    return checkpoint.step_of(path)


def restore_weights(lm, path: str, *, what: str) -> None:
    """Load the model weights of checkpoint ``path`` into ``lm`` (optimizer and data state ignored).

    A damaged or mismatching checkpoint is one CheckpointError (a ModelError) line naming it.
    """
    from gpt2ja.model import checkpoint

    checkpoint.restore_weights(lm, path, what=what)


@dataclass
class LoadedRun:
    uri: str
    model: Any  # keras_hub GPT2CausalLM
    config: ModelConfig
    tokenizer: Any  # gpt2ja.tokenization.tokenizer.Tokenizer
    hparams: dict
    checkpoint: str
    step: int


#: reads of a training run's index: each retry follows a newer checkpoint than the one just pruned
_FETCH_TRIES = 3


def fetch(run_uri: str) -> str:
    """Make the newest checkpoint of ``run_uri`` (and its tokenizer) available locally; the local dir.

    A ``gs://`` run may be training: between reading its index and its files,
    the checkpoint the index named can be pruned (``keep_checkpoints``). The
    index is then read again and its newer checkpoint fetched. The local index
    is written last, so it never names files that are not here. Before the
    first checkpoint there is no index, and :func:`latest_checkpoint` of the
    returned directory is None.
    """
    from gpt2ja.model import checkpoint

    local = cache_dir(run_uri)
    if not storage.is_gcs(run_uri):
        return local
    storage.download_dir(storage.join(run_uri, TOKENIZER_DIR), os.path.join(local, TOKENIZER_DIR))
    ckpt_uri, ckpt_local = storage.join(run_uri, CHECKPOINT_DIR), os.path.join(local, CHECKPOINT_DIR)
    index_uri, index_local = storage.join(ckpt_uri, "checkpoint"), os.path.join(ckpt_local, "checkpoint")
    index, error = None, None
    for _ in range(_FETCH_TRIES):
        if not storage.exists(index_uri):
            storage.delete(index_local)  # a cache of an older run at this URI
            return local
        seen, index = index, storage.read_text(index_uri)
        if index == seen:
            break  # the same index again: what failed is not a checkpoint pruned meanwhile
        try:
            newest = checkpoint.read_index(index)["latest"]  # "ckpt-1200.npz"
        except checkpoint.CheckpointError as err:
            raise storage.StorageError(f"{index_uri}: {err}") from None
        names = [uri.rsplit("/", 1)[-1] for uri in storage.list_files(ckpt_uri, recursive=False)]
        if newest not in names:
            error = storage.StorageError(
                f"{index_uri} names checkpoint {newest}, which is not in the bucket; "
                "the run is damaged: resume its training to write a new checkpoint"
            )
            continue
        try:
            target = os.path.join(ckpt_local, newest)
            if not os.path.exists(target):  # checkpoint files are never rewritten under their name
                storage.write_bytes(target + ".part", storage.read_bytes(storage.join(ckpt_uri, newest)))
                os.replace(target + ".part", target)
        except storage.StorageError as err:
            error = err
            continue
        storage.write_text(index_local, index)
        return local
    raise error


def load_run(run_uri: str, *, dtype: str | None = None) -> LoadedRun:
    """The trained model of ``run_uri`` (newest checkpoint), its config and tokenizer."""
    from gpt2ja.model import gpt2
    from gpt2ja.tokenization.tokenizer import Tokenizer, TokenizerError

    hparams = read_hparams(run_uri)
    cfg = model_config(hparams, run_uri=f"run {run_uri}")
    try:
        local = fetch(run_uri)
    except storage.StorageError as err:
        raise ModelError(f"run {run_uri}: {err}") from None
    prefix = latest_checkpoint(local)
    if prefix is None:
        raise ModelError(
            f"run {run_uri}: no checkpoint under {CHECKPOINT_DIR}/; train it first "
            f"(`gpt2ja train --run {run_uri} ...`) or wait for its first checkpoint"
        )
    try:
        tok = Tokenizer.load(storage.join(run_uri, TOKENIZER_DIR))
    except (TokenizerError, storage.StorageError) as err:
        raise ModelError(f"run {run_uri}: its tokenizer copy cannot be loaded ({err})") from None
    if tok.vocab_size != cfg.vocab_size:
        raise ModelError(
            f"run {run_uri}: tokenizer has {tok.vocab_size} ids but the model {cfg.vocab_size}; the run is damaged"
        )
    lm = gpt2.build_model(cfg, dtype=dtype)
    restore_weights(lm, prefix, what=f"run {run_uri}")
    return LoadedRun(
        uri=run_uri,
        model=lm,
        config=cfg,
        tokenizer=tok,
        hparams=hparams,
        checkpoint=prefix,
        step=checkpoint_step(prefix),
    )


# ----------------------------------------------------------------- writing (training's side)


def truncate_metrics(local_run: str, step: int) -> None:
    """Drop metrics.jsonl lines logged after ``step`` (a resumed run redoes that work and logs it again)."""
    path = os.path.join(local_run, METRICS)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def download(run_uri: str, local_run: str) -> None:
    """Make ``local_run`` hold the ``gs://`` run's training files (to resume it); empty for a new run.

    Only what training writes comes down (:func:`is_training_file`): not the
    run's manifest (the train stage publishes a new one, last), not the
    evaluations and exports beside it, and not the other hosts' data positions
    (they are read and written at ``run_uri`` itself). A cache left by an
    earlier run at the same URI is dropped: the bucket is what resumes.
    """
    import shutil

    shutil.rmtree(local_run, ignore_errors=True)
    os.makedirs(local_run, exist_ok=True)
    if not storage.exists(storage.join(run_uri, HPARAMS)):
        return
    for name in TRAINING_DIRS:
        if storage.exists(storage.join(run_uri, name)):
            storage.download_dir(storage.join(run_uri, name), os.path.join(local_run, name))
    ckpt_dir = os.path.join(local_run, CHECKPOINT_DIR)
    prefix = DATA_CHECKPOINT_PREFIX.rsplit("/", 1)[-1]
    for name in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else ():
        if name.startswith(prefix):
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
    for name in TRAINING_FILES:
        if storage.exists(storage.join(run_uri, name)):
            with open(os.path.join(local_run, name), "wb") as f:
                f.write(storage.read_bytes(storage.join(run_uri, name)))


# ----------------------------------------------------------------- what training writes


def write_run_files(
    local: str, cfg: "TrainConfig", model_cfg: ModelConfig, manifest: dict, tok, lm, resumed: int | None = None
) -> None:
    """``hparams.json`` (and the tokenizer copy of a new run); a resume keeps the run's history of changes."""
    history: list[dict] = []
    if resumed is not None:  # a resumed run: what it was trained with so far stays on record
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(local, HPARAMS), encoding="utf-8") as f:
                before = json.load(f)
            history = list(before.get("history") or [])
            changed = changed_settings(before.get("train") or {}, cfg)
            if (before.get("train") or {}).get("steps") not in (None, cfg.steps):
                changed["steps"] = (before["train"]["steps"], cfg.steps)
            if changed:
                history.append(
                    {
                        "step": resumed,
                        "changed": {k: list(v) for k, v in changed.items()},
                        "override": cfg.override,
                        "code_version": storage.code_version(),
                    }
                )
    hparams = {
        "format": FORMAT,
        "model": model_cfg.model_dump(),
        "train": cfg.model_dump(),
        "refs": "relative",  # data.uri is relative to the run directory (data_uri); "train" is as given
        "data": {
            "uri": storage.relative_ref(cfg.data, cfg.run),
            "fingerprint": manifest.get("fingerprint"),
            "seq_len": manifest["seq_len"],
            "vocab_size": manifest["vocab_size"],
            "eos_id": manifest["eos_id"],
        },
        "tokenizer": {"path": TOKENIZER_DIR, "kind": tok.kind, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id},
        "padded_vocab_size": model_cfg.padded_vocab_size,
        "parameters": int(lm.count_params()),
        "code_version": storage.code_version(),
        "history": history,  # [{step, changed: {setting: [before, after]}, …}]: settings changed on resume
    }
    # atomically: a second train of this run reads it (_check_resumable) before it finds the run locked
    storage.write_text(
        os.path.join(local, HPARAMS), json.dumps(hparams, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    )
    tok_dir = os.path.join(local, TOKENIZER_DIR)
    if not (resumed is not None and storage.read_manifest(tok_dir)):
        tok.save(tok_dir)


def build_run_manifest(local: str, cfg: "TrainConfig", fp: str, inputs: list[dict], lm, seconds: float) -> dict:
    """The run's manifest (not written: the train stage publishes it last): what training wrote under ``local``.

    Paths are relative to the run directory; only training's own files are listed
    (:func:`is_training_file`), so the run's ``eval/`` and ``export/`` can change without
    making the run unverifiable.
    """
    files = [
        storage.file_info(p, root=local)
        for p in storage.list_files(local)
        if is_training_file(os.path.relpath(p, local).replace(os.sep, "/"))
    ]
    counts = {"steps": cfg.steps, "tokens": cfg.steps * cfg.batch_tokens, "parameters": int(lm.count_params())}
    config = {"train": cfg.fingerprint_config()}
    manifest = storage.build_manifest(
        stage=STAGE,
        config=config,
        inputs=inputs,
        counts=counts,
        files=files,
        timings={"last_session_s": round(seconds, 3)},
    )
    manifest["fingerprint"] = fp  # the fingerprint train() checks (includes the model shape)
    return manifest

"""Checkpoints that both backends write and read: one ``.npz`` per step, an index, the newest K kept.

::

    {run}/checkpoints/
        ckpt-{step}.npz        every array of the training state, by name (numpy's npz: a zip of .npy files)
        checkpoint             the index (JSON): the newest checkpoint and those kept, written after its file

The arrays of one checkpoint, named so that any Keras 3 backend can put them
back into a freshly built model and optimizer:

* ``model/{variable path}``: the weights (``token_embedding/embeddings``,
  ``transformer_layer_0/self_attention/query/kernel``, …: KerasHub's own
  layer names, the same on TensorFlow and JAX);
* ``optimizer/{variable path}``: AdamW's ``iteration`` (hence the learning
  rate schedule) and its moments, named after the weights
  (``token_embedding_embeddings_momentum``), the loss scale's state under fp16;
* ``rng/{i}``: the random state of every dropout layer (Keras ``SeedGenerator``
  states, in the model's fixed variable order), so a resumed run draws the
  same dropout masks as an unbroken one;
* ``__meta__``: JSON: the format, the step, ``examples`` (the run's position
  in the global data order, :mod:`gpt2ja.model.data_order`), the backend that wrote
  it and the weights' names, shapes and dtypes.

Names, not positions: a variable's path does not depend on the order models
were built in a process, while Keras' optimizer and seed-generator names do
(``adam_w_1``, ``seed_generator_7``): those are stored without the
optimizer's own name and by order respectively.

Publishing: the ``.npz`` is written to a temporary name in the same folder and
renamed (atomic on a POSIX filesystem), then the index is replaced the same
way, then checkpoints beyond the newest ``keep`` are deleted. A kill at any
instant leaves the index naming a whole checkpoint (the previous one before
the rename of the index), and stray temporary files that the next save
removes. The random states are backend-specific (TensorFlow's int64 seeds
draw other masks than JAX's uint32 keys): weights, optimizer and data position
carry over between backends, the dropout stream does not.

Runs written before this format hold ``tf.train.Checkpoint`` files
(``ckpt-{step}.index`` + ``.data-*``); :func:`convert_tf_run` (``gpt2ja
convert-checkpoints``) writes their newest checkpoint in this format.

Example::

    save(ckpt_dir, 120, state_arrays(lm, opt), examples=3840, backend="jax", keep=3)
    ckpt = load(latest(ckpt_dir))          # Checkpoint(step=120, examples=3840, arrays={…}, meta={…})
    assign_model(lm, ckpt); assign_optimizer(opt, ckpt); assign_rng(lm, ckpt)
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpt2ja.model.presets import ModelError

FORMAT = "gpt2ja-checkpoint/1"
NAME = "ckpt"
INDEX = "checkpoint"
SUFFIX = ".npz"
META = "__meta__"
_FILE = re.compile(rf"^{NAME}-(\d+){re.escape(SUFFIX)}$")
_TF_INDEX = re.compile(rf"^{NAME}-(\d+)\.index$")


class CheckpointError(ModelError):
    """A checkpoint that cannot be read or does not fit the model: one line naming it and the fix.

    A :class:`~gpt2ja.model.presets.ModelError` (what loading a run raises), so it propagates as it is.
    """


@dataclass
class Checkpoint:
    path: str
    step: int
    examples: int
    arrays: dict[str, np.ndarray]
    meta: dict


# ----------------------------------------------------------------- names of the state


def _to_numpy(value) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value))


def rng_variables(lm) -> list:
    """The dropout layers' seed-generator states among the model's non-trainable variables, in their fixed order."""
    return [v for v in lm.non_trainable_variables if v.path.endswith("seed_generator_state")]


def optimizer_name(variable) -> str:
    """An optimizer variable's name without the optimizer's own (``adam_w_1/iteration`` → ``iteration``)."""
    return variable.path.split("/", 1)[-1]


def model_arrays(lm, values=None) -> dict[str, np.ndarray]:
    """``{"model/{path}": array}`` of the trainable weights (``values``: the same list as arrays, e.g. JAX state)."""
    variables = lm.trainable_variables
    values = variables if values is None else values
    return {f"model/{v.path}": _to_numpy(x) for v, x in zip(variables, values, strict=True)}


def optimizer_arrays(opt, values=None) -> dict[str, np.ndarray]:
    """``{"optimizer/{name}": array}`` of every optimizer variable (``values``: parallel to ``opt.variables``)."""
    variables = opt.variables
    values = variables if values is None else values
    return {f"optimizer/{optimizer_name(v)}": _to_numpy(x) for v, x in zip(variables, values, strict=True)}


def rng_arrays(states) -> dict[str, np.ndarray]:
    """``{"rng/{i}": state}`` for the dropout states (variables or arrays) in :func:`rng_variables` order."""
    return {f"rng/{i}": _to_numpy(s) for i, s in enumerate(states)}


def state_arrays(lm, opt) -> dict[str, np.ndarray]:
    """Everything a checkpoint holds but the step and data position, read from Keras variables."""
    return {**model_arrays(lm), **optimizer_arrays(opt), **rng_arrays(rng_variables(lm))}


# ----------------------------------------------------------------- write


def checkpoint_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"{NAME}-{step}{SUFFIX}")


def save(ckpt_dir: str, step: int, arrays: dict[str, np.ndarray], *, examples: int, backend: str, keep: int) -> str:
    """Publish checkpoint ``step`` (atomically), then the index, then drop all but the newest ``keep``; its path."""
    os.makedirs(ckpt_dir, exist_ok=True)
    meta = {
        "format": FORMAT,
        "step": int(step),
        "examples": int(examples),
        "backend": backend,
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
    }
    path = checkpoint_path(ckpt_dir, step)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, **{META: np.frombuffer(json.dumps(meta).encode(), np.uint8)})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    kept = sorted({*_steps(ckpt_dir), int(step)})[-keep:]
    _write_index(ckpt_dir, int(step), kept)
    for old in _steps(ckpt_dir):
        if old not in kept:
            _remove(checkpoint_path(ckpt_dir, old))
    for name in os.listdir(ckpt_dir):  # temporary files of a save that was killed
        if ".tmp-" in name and not name.endswith(f".tmp-{os.getpid()}"):
            _remove(os.path.join(ckpt_dir, name))
    return path


def _write_index(ckpt_dir: str, newest: int, kept: list[int]) -> None:
    index = {"format": FORMAT, "latest": f"{NAME}-{newest}{SUFFIX}", "all": [f"{NAME}-{s}{SUFFIX}" for s in kept]}
    path = os.path.join(ckpt_dir, INDEX)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(index, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _steps(ckpt_dir: str) -> list[int]:
    names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    return sorted(int(m.group(1)) for m in map(_FILE.match, names) if m)


# ----------------------------------------------------------------- read


def read_index(text: str) -> dict:
    """The parsed index; a CheckpointError for anything else (a TensorFlow ``checkpoint`` file among them)."""
    try:
        index = json.loads(text)
    except ValueError:
        index = None
    if not isinstance(index, dict) or index.get("format") != FORMAT or "latest" not in index:
        raise CheckpointError(
            "not a gpt2ja checkpoint index (a TensorFlow checkpoint's?); convert the run with "
            "`gpt2ja convert-checkpoints --run RUN`"
        )
    return index


def latest(ckpt_dir: str) -> str | None:
    """The newest published checkpoint under ``ckpt_dir`` (what the index names), or None before the first."""
    path = os.path.join(ckpt_dir, INDEX)
    text = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    try:
        index = read_index(text) if text is not None else None
    except CheckpointError as err:
        index, bad = None, f"{path}: {err}"
    else:
        bad = None
    if index is None:
        old = tf_checkpoints(ckpt_dir)
        if old and not _steps(ckpt_dir):
            raise CheckpointError(
                f"{ckpt_dir} holds TensorFlow checkpoints of an older gpt2ja ({old[-1]}); "
                f"convert them with `gpt2ja convert-checkpoints --run "
                f"{os.path.dirname(ckpt_dir.rstrip('/'))}`"
            )
        if bad:
            raise CheckpointError(bad)
        return None
    newest = os.path.join(ckpt_dir, index["latest"])
    if os.path.exists(newest):
        return newest
    for name in reversed(index.get("all") or []):  # the newest file went missing: the one before it
        if os.path.exists(os.path.join(ckpt_dir, name)):
            return os.path.join(ckpt_dir, name)
    raise CheckpointError(
        f"{path} names {index['latest']}, which is not there; the run is damaged: delete "
        f"{path} to start the run again, or restore the file"
    )


def step_of(path: str) -> int:
    """``…/ckpt-1200.npz`` → 1200."""
    m = _FILE.match(os.path.basename(path))
    if not m:
        raise CheckpointError(f"{path} is not a gpt2ja checkpoint file ({NAME}-STEP{SUFFIX})")
    return int(m.group(1))


def load(path: str) -> Checkpoint:
    """Every array of the checkpoint ``path``; one CheckpointError line when it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({' '.join(str(err).split())[:160]}); it is "
            "damaged: delete it (and the index names the previous one) to resume from the "
            "checkpoint before"
        ) from None
    try:
        meta = json.loads(arrays.pop(META).tobytes())
    except (KeyError, ValueError):
        raise CheckpointError(f"checkpoint {path} has no readable {META}; it is not a gpt2ja checkpoint") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is in format {meta.get('format')!r}, not {FORMAT}; a newer gpt2ja wrote it: upgrade"
        )
    return Checkpoint(path=path, step=int(meta["step"]), examples=int(meta["examples"]), arrays=arrays, meta=meta)


def _check(ckpt: Checkpoint, key: str, variable) -> np.ndarray:
    if key not in ckpt.arrays:
        raise CheckpointError(
            f"checkpoint {ckpt.path} has no {key}: it is of another model; delete it or "
            "train this run with the model it was started with"
        )
    value = ckpt.arrays[key]
    if tuple(value.shape) != tuple(variable.shape):
        raise CheckpointError(
            f"checkpoint {ckpt.path}: {key} is {tuple(value.shape)}, the model's "
            f"{tuple(variable.shape)}; it is of another model shape"
        )
    return value


def model_values(lm, ckpt: Checkpoint) -> list[np.ndarray]:
    """The checkpoint's weights in ``lm.trainable_variables`` order (shapes checked, the variables' dtypes)."""
    return [_check(ckpt, f"model/{v.path}", v).astype(v.dtype) for v in lm.trainable_variables]


def optimizer_values(opt, ckpt: Checkpoint) -> list[np.ndarray]:
    """The checkpoint's optimizer state in ``opt.variables`` order."""
    return [_check(ckpt, f"optimizer/{optimizer_name(v)}", v).astype(v.dtype) for v in opt.variables]


def rng_values(lm, ckpt: Checkpoint) -> list[np.ndarray]:
    """The checkpoint's dropout states in :func:`rng_variables` order; this backend's dtype."""
    return [_check(ckpt, f"rng/{i}", v).astype(v.dtype) for i, v in enumerate(rng_variables(lm))]


def assign_model(lm, ckpt: Checkpoint) -> None:
    for v, x in zip(lm.trainable_variables, model_values(lm, ckpt)):
        v.assign(x)


def assign_optimizer(opt, ckpt: Checkpoint) -> None:
    for v, x in zip(opt.variables, optimizer_values(opt, ckpt)):
        v.assign(x)


def assign_rng(lm, ckpt: Checkpoint) -> None:
    for v, x in zip(rng_variables(lm), rng_values(lm, ckpt)):
        v.assign(x)


def restore_weights(lm, path: str, *, what: str) -> Checkpoint:
    """Load checkpoint ``path``'s weights into ``lm`` (optimizer and data state ignored); a line names a misfit."""
    try:
        ckpt = load(path)
        assign_model(lm, ckpt)
    except CheckpointError as err:
        raise CheckpointError(f"{what}: {err}") from None
    return ckpt


# ----------------------------------------------------------------- TensorFlow checkpoints of older runs


def tf_checkpoints(ckpt_dir: str) -> list[str]:
    """``ckpt-{step}`` prefixes of ``tf.train.Checkpoint`` files under ``ckpt_dir``, oldest first."""
    names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    steps = sorted(int(m.group(1)) for m in map(_TF_INDEX.match, names) if m)
    return [f"{NAME}-{s}" for s in steps]


def convert_tf_run(
    local_run: str, model_cfg, train_cfg: Any | None, *, examples_per_step: int | None = None, say=print
) -> str:
    """Write the newest ``tf.train.Checkpoint`` of a local run in this format (TensorFlow needed); its path.

    The model, its AdamW and the step/examples counters are rebuilt on
    TensorFlow and restored with the object graph older gpt2ja wrote
    (``backbone``, ``optimizer``, ``step``, ``examples``, ``rng``), then saved as
    :func:`save` does. A run whose hparams carry no train settings converts its
    weights alone. A checkpoint from before the global data order holds no
    ``examples``: it becomes ``step × examples_per_step``, as training assumed.
    """
    import keras
    import tensorflow as tf

    from gpt2ja.model import gpt2

    ckpt_dir = os.path.join(local_run, "checkpoints")
    prefixes = tf_checkpoints(ckpt_dir)
    if not prefixes:
        raise CheckpointError(f"{ckpt_dir}: no TensorFlow checkpoint (ckpt-N.index) to convert")
    prefix = os.path.join(ckpt_dir, prefixes[-1])
    if keras.backend.backend() != "tensorflow":
        raise CheckpointError(
            "converting TensorFlow checkpoints needs Keras on TensorFlow; run it with KERAS_BACKEND=tensorflow"
        )
    lm = gpt2.build_model(model_cfg)
    parts: dict[str, Any] = {"backbone": lm.backbone}
    opt = None
    names = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(prefix)}
    if train_cfg is not None and "optimizer" in names:
        from gpt2ja.model.optim import make_optimizer

        opt = make_optimizer(train_cfg, lm)
        parts["optimizer"] = opt
    step = tf.Variable(0, dtype=tf.int64, name="step")
    examples = tf.Variable(0, dtype=tf.int64, name="examples")
    parts.update(step=step, examples=examples)
    if "rng" in names:
        parts["rng"] = gpt2.dropout_rng_states(lm)  # the order older gpt2ja saved them in
    try:
        tf.train.Checkpoint(**parts).restore(prefix).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"TensorFlow checkpoint {prefix} cannot be restored ({' '.join(str(err).split())[:200]})"
        ) from None
    number = int(prefixes[-1].rsplit("-", 1)[1])
    at = int(examples.numpy())
    if "examples" not in names and examples_per_step:  # written before the global data order
        at = number * examples_per_step
    arrays = {**model_arrays(lm), **rng_arrays(rng_variables(lm))}
    if opt is not None:
        arrays.update(optimizer_arrays(opt))
    path = save(ckpt_dir, number, arrays, examples=at, backend="tensorflow", keep=1 << 30)
    say(f"converted {prefix} → {path} (step {number}, example {at:,}{'' if opt else ', weights only'})")
    return path

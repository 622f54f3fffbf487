"""Which Keras 3 backend this process runs: TensorFlow (the CPU default) or JAX (GPUs, TPUs, no TensorFlow).

Keras reads its backend once, when it is first imported (``KERAS_BACKEND``).
Every entry point that builds a model calls :func:`use` first:

* ``use("jax")`` / ``use("tensorflow")``: that backend, set before Keras loads;
  one line when Keras is already loaded with the other one (a process runs
  one backend: ``gpt2ja`` commands and the pipeline's stage tasks each choose
  theirs before any model code runs);
* ``use(None)``: ``KERAS_BACKEND`` if the user set it, else TensorFlow where it
  is installed and JAX where it is not (a GPU machine with JAX alone runs
  ``gpt2ja eval``/``generate``/``export`` without being told).

Example::

    from gpt2ja.model import backend
    backend.use("jax")        # before `import keras`
    import keras              # keras.backend.backend() == "jax"
"""

from __future__ import annotations

import importlib.util
import os
import sys

from gpt2ja.infra.errors import Gpt2jaError

BACKENDS = ("tensorflow", "jax")


class BackendError(Gpt2jaError, RuntimeError):
    """A backend that cannot be used in this process: one line naming it and the fix."""


def loaded() -> str | None:
    """The backend Keras runs in this process, or None while Keras is not imported."""
    if "keras" not in sys.modules:
        return None
    import keras

    return keras.backend.backend()


def default() -> str:
    """``KERAS_BACKEND`` if set, else tensorflow where it is installed, else jax."""
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen:
        return chosen
    return "tensorflow" if importlib.util.find_spec("tensorflow") is not None else "jax"


def use(name: str | None = None) -> str:
    """Make ``name`` (or :func:`default`) this process's Keras backend; returns it."""
    name = name or loaded() or default()
    if name not in BACKENDS:
        raise BackendError(f"backend {name!r} is not supported; use tensorflow or jax")
    have = loaded()
    if have is not None and have != name:
        raise BackendError(
            f"this process already runs Keras on {have}, and {name} was asked for; run it as its own "
            f"command (`gpt2ja ... --backend {name}`, or KERAS_BACKEND={name})"
        )
    if have is None:
        missing = "jax" if name == "jax" else "tensorflow"
        if importlib.util.find_spec(missing) is None:
            extra = (
                "pip install 'jax[cuda13]' (GPU), 'jax[tpu]' (TPU) or jax (CPU)"
                if name == "jax"
                else "pip install tensorflow, or train with --backend jax"
            )
            raise BackendError(f"backend {name}: {missing} is not installed here; {extra}")
        os.environ["KERAS_BACKEND"] = name
    return name

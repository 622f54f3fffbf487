"""TensorFlow and JAX read a run alike, and reading a run on JAX needs no TensorFlow.

A process runs one Keras backend (``KERAS_BACKEND`` is read when Keras is first
imported), so each backend's side runs in a subprocess of its own and hands
back what it computed (``.npy`` and JSON files), compared here:

* the TensorFlow side writes a tiny run (:func:`tests.corpora.write_tiny_run`:
  every weight random, the bytes tokenizer, ``checkpoints/ckpt-1.npz``) and
  computes on it the logits of fixed ids, the bits per character of a text
  (``evaluate_run``) and greedy tokens through a 32-position window;
* the JAX side runs where ``import tensorflow`` fails (a ``tensorflow``
  package first on ``PYTHONPATH`` that raises ImportError) with
  ``KERAS_BACKEND=jax``: the same figures from the TensorFlow-written run;
  then a run of its own written from the JAX backend, on which it runs
  ``gpt2ja eval``, ``generate`` and ``export hf`` (``gpt2ja.cli.main``; the
  export's logit check against transformers included); and the generation
  rules of ``tests/test_model.py`` on "steered" models (EOS, max_chars past
  the context, padding never sampled, cache = full pass, seeds).

The JAX sampling filters are checked here in-process against the numpy
reference of ``tests/test_model.py`` (JAX beside TensorFlow in one process
is fine: no Keras is involved).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import procs

REPO = Path(__file__).resolve().parent.parent
CONTEXT = 32
TEXT = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。" * 3  # 297 byte tokens: many windows
PROMPTS = ["吾輩は猫", "", "ab"]  # rows of different lengths step together
GREEDY = {"max_new_tokens": 70, "keep": 20, "chunk": 16}  # 70 new ids through 32 positions: the window slides
TOLERANCE = 1e-4


def _ids() -> np.ndarray:
    """Fixed ``(3, C)`` inputs, padding ids (257–319) among them."""
    return np.random.default_rng(0).integers(0, 320, size=(3, CONTEXT)).astype(np.int32)


# ----------------------------------------------------------------- what each backend computes (in its subprocess)


def _figures(run_uri: str, out: Path) -> None:
    """``out/logits.npy``, ``out/figures.json`` (evaluate_run's, greedy ids) of the run, on this process's backend."""
    from keras import ops

    from gpt2ja.model import gpt2, runs
    from gpt2ja.model.evaluate import evaluate_run
    from gpt2ja.model.generate import Generator

    out.mkdir(parents=True)
    run = runs.load_run(run_uri)
    np.save(out / "logits.npy", ops.convert_to_numpy(gpt2.logits(run.model, _ids())))
    (out / "text.txt").write_text(TEXT, encoding="utf-8")
    scored = evaluate_run(run_uri, [str(out / "text.txt")], prime_chars=0, write=False)
    tok = run.tokenizer
    gen = Generator(run.model, vocab_size=tok.vocab_size, eos_id=tok.eos_id)
    greedy = gen.generate_ids([[tok.eos_id] + tok.encode(p) for p in PROMPTS], greedy=True, **GREEDY)
    figures = {k: scored[k] for k in ("bits_per_character", "nll_nats", "tokens", "characters")}
    (out / "figures.json").write_text(json.dumps({**figures, "greedy": greedy, "generator": type(gen).__name__}))


def tensorflow_side(root: str) -> None:
    """The TensorFlow subprocess: ``{root}/tf/run`` written on TensorFlow, its figures in ``{root}/on-tensorflow``."""
    import keras

    from tests.corpora import write_tiny_run

    assert keras.backend.backend() == "tensorflow"
    run = write_tiny_run(Path(root) / "tf", context=CONTEXT)
    _figures(str(run), Path(root) / "on-tensorflow")


def _write_jax_run(root: Path) -> Path:
    """``{root}/run`` written by ``write_tiny_run`` on JAX (other random weights), and its logits of :func:`_ids`."""
    import keras

    from gpt2ja.model import gpt2, runs
    from tests.corpora import write_tiny_run

    run = write_tiny_run(root, context=CONTEXT, seed=4)
    np.save(root / "logits.npy", keras.ops.convert_to_numpy(gpt2.logits(runs.load_run(str(run)).model, _ids())))
    return run


def _steered(token: int, strength: float):
    """A JAX model whose logits are ``strength`` for ``token`` and 0 for every other id (tests/test_model.py's)."""
    import keras

    from gpt2ja.model import gpt2
    from gpt2ja.model.presets import ModelConfig

    keras.utils.set_random_seed(0)
    lm = gpt2.build_model(ModelConfig.from_preset("tiny", vocab_size=257, context_length=CONTEXT))
    for v in lm.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    b = lm.backbone
    unit = np.zeros(b.hidden_dim, np.float32)
    unit[0] = 1.0
    table = np.zeros(b.token_embedding.embeddings.shape, np.float32)
    table[token] = unit  # E[token] = e₀
    b.token_embedding.embeddings.assign(table)
    b.layer_norm.beta.assign(strength * unit)  # final state strength · e₀: logit `strength` at token
    return lm


def _generation_rules(tf_run: Path) -> dict:
    """tests/test_model.py's generation cases on JAX, as plain values (random weights: ``tf_run``'s)."""
    from gpt2ja.model import runs
    from gpt2ja.model.generate import Generator, generate
    from gpt2ja.model.summaries import Sampler
    from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    out: dict = {}
    eos_lm = _steered(tok.eos_id, 20.0)
    out["eos"] = [
        (s.prompt, s.text, s.ids, s.stopped)
        for s in generate(eos_lm, tok, ["吾輩は", ""], num=2, max_chars=50, top_k=5, seed=1)
    ]
    lm = _steered(ord("a"), 20.0)
    sampler = Sampler(lm, tok, "x", tokens=5, seed=0)  # the JAX trainer's: its weights as arrays
    out["sampler"] = [sampler()[1], sampler(weights=[v.value for v in eos_lm.trainable_variables])[1], sampler()[1]]
    gen = Generator(lm, vocab_size=257, eos_id=256)
    out["long"] = [
        (s.text, s.stopped)
        for use_cache in (True, False)
        for s in generate(lm, tok, "x", max_chars=100, greedy=True, use_cache=use_cache, generator=gen)
    ]
    [capped] = generate(lm, tok, "x", max_new_tokens=7, max_chars=100, greedy=True, generator=gen)
    out["capped"] = (capped.text, capped.stopped)
    lm = _steered(300, 10.0)  # a padding id; unmasked it would win almost always
    out["padding"] = [i for s in generate(lm, tok, ["", "吾輩"], num=4, max_new_tokens=40, seed=5) for i in s.ids]
    run = runs.load_run(str(tf_run))
    gen = Generator(run.model, vocab_size=257, eos_id=256)
    prompts = [[256] + tok.encode(p) for p in PROMPTS]
    out["cached_greedy"] = gen.generate_ids(prompts, greedy=True, **GREEDY)
    out["full_greedy"] = gen.generate_ids(prompts, greedy=True, use_cache=False, **GREEDY)
    sample = {"top_k": 50, "top_p": 0.9, **GREEDY}
    out["sampled"] = [
        gen.generate_ids(prompts, seed=11, **sample),
        gen.generate_ids(prompts, seed=11, use_cache=False, **sample),
        gen.generate_ids(prompts, seed=11, **sample),
        gen.generate_ids(prompts, seed=12, **sample),
    ]
    out["distinct"] = len(
        {tuple(s.ids) for s in generate(run.model, tok, "吾輩は", num=3, max_new_tokens=20, seed=3, generator=gen)}
    )
    return out


def jax_side(root: str) -> None:
    """The JAX subprocess (TensorFlow blocked): figures of the TensorFlow-written run, a JAX-written run through
    the CLI, the generation rules; ``{root}/on-jax/…`` and ``{root}/jax/…``."""
    import keras

    from gpt2ja.cli import main

    assert keras.backend.backend() == "jax"
    root_ = Path(root)
    _figures(str(root_ / "tf" / "run"), root_ / "on-jax")
    run = _write_jax_run(root_ / "jax")
    (root_ / "jax" / "text.txt").write_text(TEXT, encoding="utf-8")
    printed = {}
    for name, argv in {
        "eval": ["eval", "--run", str(run), "--text", str(root_ / "jax" / "text.txt"), "--prime-chars", "0"],
        "generate": [
            "generate",
            "--run",
            str(run),
            "--prompt",
            "吾輩は",
            "--max-chars",
            "12",
            "--num",
            "2",
            "--seed",
            "1",
        ],
        "export": ["export", "hf", "--run", str(run), "--out", str(root_ / "jax" / "hf")],
    }.items():
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            main(argv)
        printed[name] = stdout.getvalue()
    rules = _generation_rules(root_ / "tf" / "run")
    tensorflow = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
    (root_ / "jax" / "outcome.json").write_text(
        json.dumps({"printed": printed, "rules": rules, "tensorflow_modules": tensorflow}, ensure_ascii=False)
    )


def _side(name: str, root: Path, *, block_tensorflow: bool) -> None:
    path = [str(REPO)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if block_tensorflow:
        blocker = root / "blocker"
        (blocker / "tensorflow").mkdir(parents=True)
        (blocker / "tensorflow" / "__init__.py").write_text('raise ImportError("no TensorFlow on this machine")\n')
        path.insert(0, str(blocker))
        env["KERAS_BACKEND"] = "jax"
    else:
        env["KERAS_BACKEND"] = "tensorflow"
    env["PYTHONPATH"] = os.pathsep.join(path)
    script = f"import sys; from tests.test_backends import {name}; {name}(sys.argv[1])"
    proc = procs.run([sys.executable, "-c", script, str(root)], cwd=REPO, env=env)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """Both subprocesses, TensorFlow's first (the JAX side reads its run); the root they wrote into."""
    for needed in ("tensorflow", "jax", "torch", "transformers"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed: both backends and the export's check are needed here")
    root = tmp_path_factory.mktemp("backends")
    _side("tensorflow_side", root, block_tensorflow=False)
    _side("jax_side", root, block_tensorflow=True)
    return root


def _read(root: Path, side: str) -> tuple[np.ndarray, dict]:
    return np.load(root / side / "logits.npy"), json.loads((root / side / "figures.json").read_text())


# ----------------------------------------------------------------- the tests


@pytest.mark.slow
def test_the_same_weights_give_the_same_logits_on_both_backends(sides):
    """(a) A checkpoint written on TensorFlow, loaded on JAX (in a process without TensorFlow): the same logits."""
    tf_logits, _ = _read(sides, "on-tensorflow")
    jax_logits, _ = _read(sides, "on-jax")
    assert tf_logits.shape == jax_logits.shape == (3, CONTEXT, 320)
    assert np.abs(tf_logits).max() > 1.0  # spread-out logits of random weights, not a trivial match
    assert np.max(np.abs(tf_logits - jax_logits)) <= TOLERANCE


@pytest.mark.slow
def test_the_same_weights_score_the_same_bits_per_character(sides):
    """(b) evaluate_run on both backends: the same windows, the same bits per character; and the same greedy ids."""
    _, on_tf = _read(sides, "on-tensorflow")
    _, on_jax = _read(sides, "on-jax")
    assert (on_tf["tokens"], on_tf["characters"]) == (on_jax["tokens"], on_jax["characters"]) == (297, 99)
    assert on_tf["bits_per_character"] > 8.0  # random weights: far from uniform, far from good
    assert abs(on_tf["bits_per_character"] - on_jax["bits_per_character"]) <= TOLERANCE
    assert (on_tf["generator"], on_jax["generator"]) == ("Generator", "JaxGenerator")
    assert on_tf["greedy"] == on_jax["greedy"]  # 70 new ids a row, the window slid twice
    assert [len(ids) for ids, _ in on_jax["greedy"]] == [70] * 3 or "eos" in {why for _, why in on_jax["greedy"]}


@pytest.mark.slow
def test_eval_generate_and_export_run_on_jax_without_tensorflow(sides):
    """(c) A run whose checkpoint JAX wrote: gpt2ja eval, generate and export hf where TensorFlow cannot be
    imported; the export's own logit check passed, and transformers gives the JAX logits."""
    import torch

    from gpt2ja.infra import storage
    from gpt2ja.model.export import load_hf

    outcome = json.loads((sides / "jax" / "outcome.json").read_text())
    assert outcome["tensorflow_modules"] == []
    meta = json.loads(np.load(sides / "jax" / "run" / "checkpoints" / "ckpt-1.npz")["__meta__"].tobytes())
    assert meta["backend"] == "jax"
    evaluated = json.loads((sides / "jax" / "run" / "eval.json").read_text())  # what gpt2ja eval wrote
    assert f'"bits_per_character": {evaluated["bits_per_character"]}' in outcome["printed"]["eval"]
    assert (evaluated["characters"], evaluated["tokens"]) == (99, 297) and evaluated["bits_per_character"] > 8.0
    assert outcome["printed"]["generate"].count("--- prompt '吾輩は' (stopped: max_chars)") == 2
    assert "logits checked against transformers" in outcome["printed"]["export"]
    manifest = storage.read_manifest(str(sides / "jax" / "hf"))
    assert manifest["stage"] == "export" and manifest["max_logit_diff"] < TOLERANCE
    ids = _ids()
    with torch.no_grad():
        theirs = load_hf(str(sides / "jax" / "hf"))(torch.as_tensor(ids.astype(np.int64))).logits.numpy()
    ours = np.load(sides / "jax" / "logits.npy")
    assert np.abs(ours).max() > 1.0 and np.max(np.abs(ours - theirs)) <= TOLERANCE


@pytest.mark.slow
def test_jax_generation_follows_the_rules(sides):
    """tests/test_model.py's generation cases on JAX: EOS, max_chars past the context, padding, cache, seeds."""
    rules = json.loads((sides / "jax" / "outcome.json").read_text())["rules"]
    assert rules["eos"] == [["吾輩は", "", [], "eos"]] * 2 + [["", "", [], "eos"]] * 2
    assert rules["long"] == [["a" * 100, "max_chars"]] * 2  # with and without the cache, 100 ids through 32
    assert rules["capped"] == ["a" * 7, "max_tokens"]
    assert rules["sampler"] == ["aaaaa", "", "aaaaa"]  # weights=: another model's values, the variables untouched
    assert len(rules["padding"]) > 100 and max(rules["padding"]) < 257
    assert rules["cached_greedy"] == rules["full_greedy"]
    cached, full, again, other = rules["sampled"]
    assert cached == full == again and cached != other
    assert rules["distinct"] == 3


@pytest.mark.slow
def test_jax_filters_match_the_reference():
    """The JAX top-k/top-p (one sort) keep the numpy reference's tokens: ties, padding, k past V, p → 0."""
    jax = pytest.importorskip("jax")
    from gpt2ja.model.generate_jax import filter_logits
    from tests.test_model import reference_filter

    warp = jax.jit(filter_logits)
    rng = np.random.default_rng(2024)
    for seed in range(24):
        vocab = [1, 2, 7, 50, 320, 3000][seed % 6]
        logits = rng.normal(scale=3.0, size=(4, vocab)).astype(np.float32)
        if seed % 3 == 0:
            logits = np.round(logits)  # many ties
        if seed % 4 == 0 and vocab > 2:
            logits[:, -2:] = -np.inf  # masked padding ids
        for temperature in (0.7, 1.0):
            for top_k in (0, 1, 3, vocab, vocab + 5):
                for top_p in (1.0, 0.95, 0.5, 1e-9):
                    got = np.asarray(warp(logits, np.float32(temperature), np.int32(top_k), np.float32(top_p)))
                    want = reference_filter(logits, temperature, top_k, top_p)
                    np.testing.assert_array_equal(
                        np.isneginf(got), np.isneginf(want), err_msg=f"seed {seed} T {temperature} k {top_k} p {top_p}"
                    )
                    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)

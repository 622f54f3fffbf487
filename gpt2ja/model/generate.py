"""Sampling: temperature → top-k → top-p (Hugging Face's order and semantics), greedy, a fixed-size KV cache.

Filters, applied to each step's logits in this order exactly like
``transformers``' ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
``TopPLogitsWarper``:

1. padding ids (≥ the tokenizer's vocab size) → -inf: never sampled;
2. temperature: ``logits / T``;
3. top-k (``k = 0``: off): keep the logits ≥ the k-th largest (ties at the
   boundary are all kept; ``k > V`` keeps everything);
4. top-p (``p = 1``: off): over the top-k-filtered distribution, renormalised,
   sort ascending (ties by token id), drop the tokens whose cumulative
   probability is ≤ ``1 - p``; the most likely token is always kept;
5. sample from the softmax of what is left (``greedy``: argmax of step 1).

Above 1,024 ids top-p does not sort the row: probabilities are bucketed by
their float bits (monotone), the mass per bucket finds the boundary, and only
the few tokens at the boundary are sorted (:func:`_top_p_keep`; 8 × 8,064
logits: 1.3–1.5 ms against 4.1 ms for the full sort, whatever the shape of
the distribution). The tokens kept are the full sort's, up to the order of
floating-point sums at a cumulative within rounding of ``1 - p`` (tested
against a numpy reference, ties and padding included).

Decoding. Every sequence starts with EOS (a document start, as in training)
followed by its prompt. Prompts of different lengths share one buffer of the
model's ``C`` positions: all rows step together from the shortest prompt's
end, and a row whose prompt is longer keeps its own tokens until it ends
(KerasHub's scheme). With the cache (default), a prefill pass stores every
layer's keys and values in fixed ``(B, heads, C, head_dim)`` tensors, one key
and one value tensor per layer (:func:`gpt2ja.model.gpt2.call_with_layer_caches`), and
each new token costs one single-position step; without it, each token is a
full forward pass over the window (the reference the cache is tested against).
Steps run in chunks inside one ``tf.function`` (XLA where it is faster:
:class:`Generator`; on the JAX backend, jitted programs around KerasHub's
cache: :mod:`gpt2ja.model.generate_jax`); between chunks Python
checks the stops: EOS, a number of new tokens, or a length in characters of
the decoded text. When the window is full, the oldest ``C - keep`` tokens are
dropped (default ``keep = C // 2``) and the cache is rebuilt from the rest, so
generation continues past the context.

Example::

    samples = generate(lm, tok, "吾輩は", num=3, max_chars=100, top_k=40, top_p=0.95, seed=1)
    samples[0].text, samples[0].stopped        # '猫である。…', 'max_chars'
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from gpt2ja.model.generate_jax import JaxGenerator  # noqa: F401 - registers Generator(...) on JAX
from gpt2ja.model.generator import Generator, Sample, check_sampling, filter_logits  # noqa: F401 - re-exported
from gpt2ja.model.presets import ModelError

#: The committed sampling study that the defaults follow: the study run on the README's reference model
#: (configs/studies/sampling-reference.yaml). docs/studies/sampling.md is the same study on the weaker
#: 10-minute model, whose choice (top-p 0.99) these defaults were before the reference model existed.
SAMPLING_STUDY = "docs/studies/sampling-reference"
#: The sampling defaults of ``gpt2ja generate`` and of the pipeline's generate section: the decoding method
#: closest to human text in :data:`SAMPLING_STUDY` ("The defaults of gpt2ja generate": top-k 640).
#: tests/test_studies.py checks that they match that study's committed CSV.
DEFAULT_SAMPLING = {"temperature": 1.0, "top_k": 640, "top_p": 1.0}
DEFAULT_MAX_CHARS = 200


class GenerateConfig(BaseModel):
    """The generate stage's settings (``gpt2ja generate``, the pipeline's ``generate:`` section).

    Sampling: temperature, then top-k, then top-p; the defaults are :data:`DEFAULT_SAMPLING`. Example::

        GenerateConfig(run="data/runs/tiny", prompts=["吾輩は"], num=3, max_chars=60)
    """

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="a run directory")
    prompts: list[str] = Field(
        default_factory=lambda: [""], min_length=1, description="prompts to continue (an empty string: unconditional)"
    )
    num: int = Field(1, ge=1, le=64, description="continuations per prompt")
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=1, le=100_000, description="stop after this many characters")
    temperature: float = Field(
        DEFAULT_SAMPLING["temperature"],
        gt=0,
        le=100,
        description="divide the logits by this first (default: the sampling study's choice)",
    )
    top_k: int = Field(
        DEFAULT_SAMPLING["top_k"],
        ge=0,
        description="keep the k most likely tokens (0: off; default: the sampling study's choice)",
    )
    top_p: float = Field(
        DEFAULT_SAMPLING["top_p"],
        gt=0,
        le=1,
        description="keep the smallest set whose probability reaches p (1: off; default: the sampling study's choice)",
    )
    greedy: bool = Field(False, description="always take the most likely token")
    seed: int = Field(0, ge=0, description="random seed (the same seed gives the same samples)")
    backend: str | None = Field(
        None, description="tensorflow or jax (default: KERAS_BACKEND, else tensorflow where it is installed, else jax)"
    )

    def sampling(self) -> dict:
        """The keyword arguments of :func:`generate` (everything but the run, the prompts and the backend)."""
        return self.model_dump(exclude={"run", "prompts", "backend"})


def generate(
    lm,
    tokenizer,
    prompts: str | Sequence[str],
    *,
    num: int = 1,
    max_chars: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float = DEFAULT_SAMPLING["temperature"],
    top_k: int = DEFAULT_SAMPLING["top_k"],
    top_p: float = DEFAULT_SAMPLING["top_p"],
    greedy: bool = False,
    seed: int = 0,
    use_cache: bool = True,
    keep: int | None = None,
    generator: Generator | None = None,
) -> list[Sample]:
    """``num`` continuations of each prompt (rows ordered prompt by prompt), stopped at EOS or a length.

    ``max_chars`` cuts the decoded continuation at that many characters;
    ``max_new_tokens`` bounds the tokens (default ``4 × max_chars + 16``: room
    for byte-level tokenizers). One of them is required.
    """
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if num < 1 or not prompts:
        raise ModelError(f'num {num} must be ≥ 1 and at least one prompt is needed (it may be empty: "")')
    if max_chars is None and max_new_tokens is None:
        raise ModelError("give max_chars or max_new_tokens: generation needs a length limit")
    if (max_chars is not None and max_chars < 1) or (max_new_tokens is not None and max_new_tokens < 1):
        raise ModelError(f"max_chars {max_chars} and max_new_tokens {max_new_tokens} must be ≥ 1")
    limit = max_new_tokens if max_new_tokens is not None else 4 * max_chars + 16
    gen = generator or Generator(lm, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id)
    rows = [p for p in prompts for _ in range(num)]
    encoded = [[tokenizer.eos_id] + tokenizer.encode(p) for p in rows]

    def stop(row: int, ids: list[int]) -> bool:
        # strictly more than max_chars: the first max_chars characters are then complete
        return max_chars is not None and len(tokenizer.decode(ids)) > max_chars

    results = gen.generate_ids(
        encoded,
        max_new_tokens=limit,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        seed=seed,
        use_cache=use_cache,
        keep=keep,
        stop=stop,
    )
    samples = []
    for prompt, (ids, why) in zip(rows, results):
        text = tokenizer.decode(ids)
        if max_chars is not None and len(text) > max_chars:
            text, why = text[:max_chars], "max_chars"
        samples.append(Sample(prompt=prompt, text=text, ids=ids, stopped=why))
    return samples


def generate_run(run_uri: str, prompts: str | Sequence[str], **kwargs) -> list[Sample]:
    """:func:`generate` with the newest checkpoint and tokenizer of ``run_uri``."""
    from gpt2ja.model import runs

    run = runs.load_run(run_uri)
    return generate(run.model, run.tokenizer, prompts, **kwargs)

"""The model without training: presets, forward pass, loss, bits per character, sampling filters, generation.

Models here are the ``tiny`` preset at 32 positions with the 257-id bytes
tokenizer (padded to 320 ids). Some are "steered": every weight zero except
one token's embedding row and the final LayerNorm's shift, so the logits are
the same at every position (one chosen id high, the rest 0): a model whose
output is known exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpt2ja.model.presets import PRESETS, ModelConfig, ModelError, padded_vocab, param_count, preset_param_counts
from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer

tf = pytest.importorskip("tensorflow")

from gpt2ja.model import gpt2  # noqa: E402
from gpt2ja.model.evaluate import bits_per_character, score, token_logprobs, windows  # noqa: E402
from gpt2ja.model.generate import Generator, check_sampling, filter_logits, generate  # noqa: E402

TOK = ByteTokenizer()  # 257 ids, EOS 256
CONTEXT = 32
GPT2_VOCAB = 50_257
# Parameter counts KerasHub publishes for OpenAI's checkpoints (gpt2_presets.py), at 50,257 ids (unpadded).
KERAS_HUB_PARAMS = {"small": 124_439_808, "medium": 354_823_168, "large": 774_030_080, "xl": 1_557_611_200}


def tiny(seed: int = 0, context: int = CONTEXT):
    import keras

    keras.utils.set_random_seed(seed)
    return gpt2.build_model(ModelConfig.from_preset("tiny", vocab_size=TOK.vocab_size, context_length=context))


def steered(token: int, strength: float, context: int = CONTEXT):
    """A model whose logits are ``strength`` for ``token`` and 0 for every other id, at every position."""
    lm = tiny(context=context)
    for v in lm.weights:
        v.assign(tf.zeros(v.shape, v.dtype))
    b = lm.backbone
    unit = np.zeros(b.hidden_dim, np.float32)
    unit[0] = 1.0
    b.token_embedding.embeddings[token].assign(unit)  # E[token] = e₀
    b.layer_norm.beta.assign(strength * unit)  # final state strength · e₀: logit `strength` at token
    return lm


@pytest.fixture(scope="module")
def random_lm():
    return tiny(seed=3)


# ----------------------------------------------------------------- presets


def test_preset_parameter_counts():
    assert padded_vocab(257) == 320 and padded_vocab(32_000) == 32_000 and padded_vocab(GPT2_VOCAB) == 50_304
    counts = preset_param_counts(GPT2_VOCAB)
    assert list(counts) == list(PRESETS) == ["tiny", "micro", "mini", "small", "medium", "large", "xl"]
    assert counts["small"] == pytest.approx(124e6, rel=0.005)  # "GPT-2 small, 124M"
    assert preset_param_counts(32_000)["small"] == 110_418_432  # ≈ 110M with a 32k vocabulary
    for name, published in KERAS_HUB_PARAMS.items():  # minus the 47 padding rows, KerasHub's exact numbers
        hidden = PRESETS[name]["config"]["hidden_dim"]
        assert counts[name] - (50_304 - GPT2_VOCAB) * hidden == published, name
    assert counts["xl"] == pytest.approx(1.56e9, rel=0.01)


def test_model_config_errors():
    with pytest.raises(ModelError, match="unknown model preset 'huge'; use one of tiny, micro, mini, small"):
        ModelConfig.from_preset("huge", vocab_size=257)
    with pytest.raises(ValueError, match="hidden_dim 130 is not divisible by num_heads 4"):
        ModelConfig(vocab_size=257, num_layers=1, hidden_dim=130, num_heads=4, intermediate_dim=64, context_length=8)


# ----------------------------------------------------------------- the network


def test_forward_shape_param_count_and_tied_embedding(random_lm):
    cfg = ModelConfig.from_preset("tiny", vocab_size=257, context_length=CONTEXT)
    assert random_lm.count_params() == param_count(cfg)
    ids = tf.constant(np.random.default_rng(0).integers(0, 257, (2, CONTEXT)), tf.int32)
    out = gpt2.logits(random_lm, ids)
    assert out.shape == (2, CONTEXT, 320) and out.dtype == tf.float32
    # one (V_padded, H) matrix: input embedding and output layer
    matrices = [w for w in random_lm.weights if tuple(w.shape) == (320, 128)]
    assert len(matrices) == 1 and matrices[0] is gpt2.token_embedding(random_lm)
    hidden = random_lm.backbone({"token_ids": ids, "padding_mask": tf.ones_like(ids)})  # (2, T, H)
    manual = tf.einsum("bth,vh->btv", hidden, gpt2.token_embedding(random_lm))
    np.testing.assert_allclose(out.numpy(), manual.numpy(), atol=1e-5)
    # causal: changing the last token changes nothing before it
    changed = tf.concat([ids[:, :-1], (ids[:, -1:] + 1) % 257], axis=1)
    np.testing.assert_allclose(gpt2.logits(random_lm, changed)[:, :-1], out[:, :-1], atol=1e-5)


def test_loss_masks_ignored_targets():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(2, 5, 320)).astype(np.float32)
    targets = np.array([[3, 7, -1, 256, -1], [-1, 0, 1, 2, 319]], np.int32)
    logp = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
    keep = targets >= 0
    expected = -np.mean([logp[b, t, targets[b, t]] for b, t in zip(*np.nonzero(keep))])
    assert float(gpt2.causal_lm_loss(scores, targets)) == pytest.approx(expected, rel=1e-6)
    total, count = gpt2.causal_lm_loss_sum(scores, targets)
    assert float(count) == keep.sum() and float(total) == pytest.approx(expected * keep.sum(), rel=1e-6)
    scores2 = scores.copy()
    scores2[~keep] = 100.0  # logits at ignored positions do not matter
    assert float(gpt2.causal_lm_loss(scores2, targets)) == pytest.approx(expected, rel=1e-6)
    assert float(gpt2.causal_lm_loss(scores, np.full((2, 5), -1, np.int32))) == 0.0  # nothing scored: 0, not NaN
    masked = gpt2.mask_padding(tf.constant(scores), 257).numpy()
    assert np.isneginf(masked[..., 257:]).all() and np.array_equal(masked[..., :257], scores[..., :257])


# ----------------------------------------------------------------- bits per character


TEXTS = [
    "吾輩は猫である。名前はまだ無い。",
    "Hello, world!",
    "どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。",
]


def test_bits_per_character_of_a_uniform_model():
    lm = tiny()
    for v in lm.weights:  # all zero: every logit 0, uniform over the 257 real ids (padding masked)
        v.assign(tf.zeros(v.shape, v.dtype))
    result = bits_per_character(lm, TOK, TEXTS, context=16, stride=5)
    chars = sum(len(t) for t in TEXTS)
    nbytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert (result["characters"], result["bytes"], result["tokens"]) == (chars, nbytes, nbytes)  # bytes = tokens
    assert result["bits_per_token"] == pytest.approx(math.log2(257), rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(math.log2(257), rel=1e-6)
    assert result["bits_per_character"] == pytest.approx(math.log2(257) * nbytes / chars, rel=1e-6)
    assert result["token_perplexity"] == pytest.approx(257, rel=1e-5)
    assert result["nll_nats"] == pytest.approx(nbytes * math.log(257), rel=1e-6)
    assert (result["context"], result["stride"], result["min_context"]) == (16, 5, 11)


def test_windows_score_every_target_once_with_enough_context():
    seq = list(range(100, 150))  # 50 ids: targets 1..49
    for context, stride in [(16, 16), (16, 5), (16, 1), (64, 8)]:
        seen = []
        for w in windows(seq, context, stride):
            assert len(w.inputs) == len(w.targets) <= context
            for k, target in enumerate(w.targets):
                if target >= 0:
                    j = w.start + 1 + k
                    assert target == seq[j]
                    assert j - w.start >= min(j, context - stride)  # context before target j
                    seen.append(j)
        assert seen == list(range(1, 50)), (context, stride)
    with pytest.raises(ModelError, match="stride 0 must be between 1 and the context 16"):
        windows(seq, 16, 0)


@pytest.mark.slow
def test_sliding_window_log_probs_match_a_direct_computation(random_lm):
    text = "吾輩は猫である。名前はまだ無い。"  # 48 bytes + EOS: three windows at context 16, stride 6
    context, stride = 16, 6
    [(ids, logprobs)] = token_logprobs(random_lm, TOK, [text], context=context, stride=stride)
    seq = [TOK.eos_id] + TOK.encode(text)
    assert ids == seq[1:] and len(logprobs) == len(ids)
    for j in range(1, len(seq)):
        # closed form: the window scoring target j starts at the smallest multiple of stride with start + C ≥ j
        start = 0 if j <= context else math.ceil((j - context) / stride) * stride
        window = tf.constant([seq[start:j]], tf.int32)
        scores = gpt2.mask_padding(gpt2.logits(random_lm, window)[0, -1], 257)
        expected = float(tf.nn.log_softmax(scores)[seq[j]])
        assert logprobs[j - 1] == pytest.approx(expected, abs=1e-4), j
    s = score(random_lm, TOK, "abc", context=context, stride=stride)
    assert [piece for piece, _ in s.tokens] == ["a", "b", "c"] and s.ids == [97, 98, 99]
    assert s.total == pytest.approx(sum(lp for _, lp in s.tokens)) and s.total < 0
    assert bits_per_character(random_lm, TOK, ["abc"], context=context)["bits"] == pytest.approx(s.bits, rel=1e-6)


# ----------------------------------------------------------------- sampling filters


def reference_filter(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Hugging Face's TemperatureLogitsWarper → TopKLogitsWarper → TopPLogitsWarper, row by row in numpy."""
    out = logits.astype(np.float32) / np.float32(temperature)
    for row in out:
        if top_k > 0:  # TopK: remove scores < the k-th largest (k capped at V); warper absent for k = 0
            kth = sorted(row, reverse=True)[min(top_k, len(row)) - 1]
            row[row < kth] = -np.inf
        if top_p < 1.0:  # TopP: ascending sort, remove cumulative ≤ 1 - p, always keep the last (largest)
            order = np.argsort(row, kind="stable")
            finite = row[order]
            probs = np.exp(finite - finite.max())
            probs /= probs.sum()
            remove = np.cumsum(probs) <= 1.0 - top_p
            remove[-1] = False
            row[order[remove]] = -np.inf
    return out


@pytest.mark.slow
def test_filters_match_the_reference_on_random_logits():
    rng = np.random.default_rng(2024)
    warp = tf.function(filter_logits)  # one trace per vocabulary size
    cases = 0
    for seed in range(40):
        vocab = [1, 2, 7, 50, 320][seed % 5]
        logits = rng.normal(scale=3.0, size=(4, vocab)).astype(np.float32)
        if seed % 3 == 0:
            logits = np.round(logits)  # many ties
        if seed % 4 == 0 and vocab > 2:
            logits[:, -2:] = -np.inf  # masked padding ids
        for temperature in (0.7, 1.0, 1.6):
            for top_k in (0, 1, 3, vocab, vocab + 5):
                for top_p in (1.0, 0.95, 0.5, 1e-9):
                    got = warp(
                        tf.constant(logits), tf.constant(temperature), tf.constant(top_k), tf.constant(top_p)
                    ).numpy()
                    want = reference_filter(logits, temperature, top_k, top_p)
                    np.testing.assert_array_equal(
                        np.isneginf(got), np.isneginf(want), err_msg=f"seed {seed} T {temperature} k {top_k} p {top_p}"
                    )
                    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)
                    assert np.isfinite(got).any(axis=1).all()  # at least one token always kept
                    cases += 1
    assert cases == 40 * 3 * 5 * 4


@pytest.mark.slow
def test_large_vocabularies_keep_the_reference_tokens_by_bisection():
    """At a real vocabulary's size the bisection keeps the reference's tokens and the full sort's: ties
    (-0.0 and 0.0 among them), padding, p → 0, k past the vocabulary, and a flat row (a random model's)."""
    rng = np.random.default_rng(7)
    warp = tf.function(filter_logits)
    xla = tf.function(filter_logits, jit_compile=True)  # how the decoders run it on a CPU too
    for seed in range(8):
        vocab = [1025, 3000, 8064][seed % 3]
        logits = rng.normal(scale=[1.0, 3.0, 6.0, 0.01][seed % 4], size=(3, vocab)).astype(np.float32)
        if seed % 2 == 0:
            logits = np.round(logits)  # large tie groups, and -0.0 beside 0.0
            logits[:, -64:] = -np.inf  # padding
        for top_k in (0, 40, 640, vocab + 1):
            for top_p in (0.99, 0.9, 0.5, 1e-9):
                got = warp(tf.constant(logits), tf.constant(1.0), tf.constant(top_k), tf.constant(top_p)).numpy()
                want = reference_filter(logits, 1.0, top_k, top_p)
                np.testing.assert_array_equal(
                    np.isneginf(got), np.isneginf(want), err_msg=f"seed {seed} V {vocab} k {top_k} p {top_p}"
                )
                sorted_ = filter_logits(tf.constant(logits), 1.0, top_k, top_p, full_sort=True).numpy()
                np.testing.assert_array_equal(np.isneginf(got), np.isneginf(sorted_))
                compiled = xla(tf.constant(logits), tf.constant(1.0), tf.constant(top_k), tf.constant(top_p))
                np.testing.assert_array_equal(
                    np.isneginf(compiled.numpy()),
                    np.isneginf(want),
                    err_msg=f"XLA: seed {seed} V {vocab} k {top_k} p {top_p}",
                )


def test_filter_semantics_by_hand():
    row = np.array([[1.0, 3.0, 3.0, 2.0, 0.0]], np.float32)
    kept = lambda k, p: np.isfinite(filter_logits(tf.constant(row), 1.0, k, p).numpy())[0].tolist()  # noqa: E731
    assert kept(2, 1.0) == [False, True, True, False, False]
    assert kept(1, 1.0) == [False, True, True, False, False]  # ties at the k-th value are kept (as HF)
    assert kept(0, 1.0) == [True] * 5
    assert kept(0, 1e-9) == [False, False, True, False, False]  # one token: the last of the ties by id
    assert kept(3, 0.9) == [False, True, True, True, False]  # top-3 probabilities .42 .42 .16: p .9 keeps all
    assert kept(3, 0.8) == [False, True, True, False, False]  # … and p .8 drops the .16 (.16 ≤ 1 - .8)
    for bad, message in [
        (dict(top_p=0.0), "top_p 0.0 must be in"),
        (dict(top_p=1.5), "top_p 1.5"),
        (dict(top_k=-1), "top_k -1 must be ≥ 0"),
        (dict(temperature=0.0), "temperature 0.0"),
    ]:
        with pytest.raises(ModelError, match=message):
            check_sampling(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, **bad})
    check_sampling(temperature=0.0, top_k=0, top_p=1.0, greedy=True)


# ----------------------------------------------------------------- generation


@pytest.mark.slow
def test_generation_stops_at_eos():
    lm = steered(TOK.eos_id, 20.0)
    samples = generate(lm, TOK, ["吾輩は", ""], num=2, max_chars=50, top_k=5, seed=1)
    assert [(s.prompt, s.text, s.ids, s.stopped) for s in samples] == [("吾輩は", "", [], "eos")] * 2 + [
        ("", "", [], "eos")
    ] * 2


@pytest.mark.slow
def test_generation_respects_max_chars_and_slides_past_the_context():
    lm = steered(ord("a"), 20.0)
    gen = Generator(lm, vocab_size=257, eos_id=256)
    [five] = generate(lm, TOK, "x", max_chars=5, greedy=True, generator=gen)
    assert (five.text, five.stopped) == ("aaaaa", "max_chars")
    for use_cache in (True, False):  # 100 characters through a 32-position window
        [long] = generate(lm, TOK, "x", max_chars=100, greedy=True, use_cache=use_cache, generator=gen)
        assert (long.text, long.stopped) == ("a" * 100, "max_chars")
    [capped] = generate(lm, TOK, "x", max_new_tokens=7, max_chars=100, greedy=True, generator=gen)
    assert (capped.text, capped.stopped) == ("a" * 7, "max_tokens")


@pytest.mark.slow
def test_padding_ids_are_never_sampled():
    lm = steered(300, 10.0)  # id 300 is padding (257 real ids → 320 rows); unmasked it would win almost always
    samples = generate(lm, TOK, ["", "吾輩"], num=4, max_new_tokens=40, seed=5)
    ids = [i for s in samples for i in s.ids]
    assert len(ids) > 100 and max(ids) < 257
    [greedy] = generate(lm, TOK, "", max_new_tokens=5, greedy=True)
    assert max(greedy.ids) < 257


@pytest.mark.slow
def test_cache_matches_full_forward_and_seeds_repeat(random_lm):
    lm = random_lm
    gen = Generator(lm, vocab_size=257, eos_id=256)
    # the cached single-position step gives the full pass's logits
    ids = tf.constant(np.random.default_rng(4).integers(0, 257, (2, CONTEXT)), tf.int32)
    cache = gen._prefill(ids)
    stepped, _ = gpt2.call_with_layer_caches(lm, ids[:, 9:10], cache, 9)
    np.testing.assert_allclose(stepped[:, 0].numpy(), gpt2.logits(lm, ids)[:, 9].numpy(), atol=1e-4)
    # … and KerasHub's own cached step (one stacked cache tensor) the same logits
    b = lm.backbone
    hub_cache = tf.zeros([2, b.num_layers, 2, CONTEXT, b.num_heads, b.hidden_dim // b.num_heads])
    _, _, hub_cache = lm.call_with_cache(ids, hub_cache, 0)
    hub, _, _ = lm.call_with_cache(ids[:, 9:10], hub_cache, 9)
    np.testing.assert_allclose(stepped[:, 0].numpy(), hub[:, 0].numpy(), atol=1e-5)
    # whole generations: prompts of different lengths, 70 new tokens through the 32-position window
    prompts = [[256] + TOK.encode("吾輩は猫"), [256], [256] + TOK.encode("ab")]
    kw = dict(max_new_tokens=70, keep=20, chunk=16)
    cached = gen.generate_ids(prompts, greedy=True, **kw)
    full = gen.generate_ids(prompts, greedy=True, use_cache=False, **kw)
    assert cached == full and all(len(ids) == 70 or why == "eos" for ids, why in cached)
    sampled = gen.generate_ids(prompts, seed=11, top_k=50, top_p=0.9, **kw)
    assert sampled == gen.generate_ids(prompts, seed=11, top_k=50, top_p=0.9, use_cache=False, **kw)
    assert sampled == gen.generate_ids(prompts, seed=11, top_k=50, top_p=0.9, **kw)  # same seed, same text
    assert sampled != gen.generate_ids(prompts, seed=12, top_k=50, top_p=0.9, **kw)
    rows = generate(lm, TOK, "吾輩は", num=3, max_new_tokens=20, seed=3, generator=gen)
    assert len({tuple(s.ids) for s in rows}) == 3  # three different samples of one prompt


@pytest.mark.slow
def test_xla_generation_matches_the_plain_graph(random_lm):
    prompts = [[256] + TOK.encode("吾輩"), [256]]
    kw = dict(max_new_tokens=40, keep=16)
    xla = Generator(random_lm, vocab_size=257, eos_id=256, jit_compile=True)
    plain = Generator(random_lm, vocab_size=257, eos_id=256, jit_compile=False)
    assert xla.generate_ids(prompts, greedy=True, **kw) == plain.generate_ids(prompts, greedy=True, **kw)
    # XLA draws its own random numbers (another generator than TF's CPU kernels): same seed, other samples,
    # but repeatable, and only from the top-k
    sampled = xla.generate_ids(prompts, seed=2, top_k=3, **kw)
    assert sampled == xla.generate_ids(prompts, seed=2, top_k=3, **kw)
    assert all(len(ids) == 40 for ids, _ in sampled)


@pytest.mark.slow
def test_a_prompt_outside_the_vocabulary_goes_through_byte_fallback(tmp_path):
    """Characters the sentencepiece vocabulary never saw (emoji, a non-BMP kanji) are byte pieces, not <unk>:
    generation and scoring take such a prompt as it is and give it back unchanged."""
    import keras

    from gpt2ja.tokenization.spm import BYTE_IDS, UNK_ID, SentencePieceTokenizer, train_model

    sample = tmp_path / "sample.txt"
    sample.write_text("吾輩は猫である。名前はまだ無い。\nどこで生れたかとんと見当がつかぬ。\n" * 40, encoding="utf-8")
    tok = SentencePieceTokenizer(
        train_model(
            str(sample),
            where="test",
            vocab_size=286,
            model_type="unigram",
            character_coverage=1.0,
            num_threads=1,
            max_sentence_length=4096,
        )
    )
    prompt = "🍣と𠮷の猫"
    ids = tok.encode(prompt)
    assert UNK_ID not in ids and sum(i in BYTE_IDS for i in ids) == 4 + 4 + 3  # 🍣, 𠮷, の: never seen
    keras.utils.set_random_seed(0)
    lm = gpt2.build_model(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, context_length=CONTEXT))
    [sample_] = generate(lm, tok, prompt, max_chars=4, seed=2, top_k=10)
    assert sample_.prompt == prompt and 1 <= len(sample_.text) <= 4  # random weights: any bytes may follow
    scored = score(lm, tok, prompt)
    assert scored.ids == ids and np.isfinite(scored.total) and scored.total < 0

"""Export a run to the Hugging Face ``transformers`` layout (``GPT2LMHeadModel``), verified before publishing.

::

    export_hf("data/runs/demo", "data/export/demo")        # or gs://bucket/export/demo

    {out}/
        config.json               GPT2Config: n_embd, n_layer, n_head, n_inner, n_positions,
                                  vocab_size = the padded size, activation "gelu_new", eps 1e-5
        model.safetensors         float32 weights under HF names (transformer.wte, …, transformer.ln_f)
        generation_config.json    bos = eos = pad = our eos_id; padding ids ≥ vocab_size suppressed;
                                  sampling = gpt2ja generate's defaults, max_new_tokens = context / 2
        tokenizer.json, tokenizer_config.json   AutoTokenizer (fast; "<|endoftext|>" first, pads on the
                                  left, model_max_length = context), checked against ours
        spm.model                 (sentencepiece kinds) the tokenizer's model, as-is
        gpt2ja_tokenizer/         a full copy of our tokenizer artifact (Tokenizer.load reads it)
        README.md                 the model card: Hub metadata (licence from the corpus's documents),
                                  use, sampling, evaluation (eval.json, baselines), training, limits
        _MANIFEST.json            written last: fingerprint (the run's manifest + format + eval), files,
                                  logit check

    push_to_hub("data/export/demo", "you/gpt2ja-demo")   # HfApi.create_repo + upload_folder

Weight mapping. KerasHub's GPT-2 is OpenAI's GPT-2 with the same maths:
pre-LayerNorm blocks (eps 1e-5), tanh-approximated GELU (``gelu_approximate``,
HF ``gelu_new``), attention scaled by 1/√head_dim, a final LayerNorm and the
LM head tied to the token embedding. Only the layout differs: KerasHub's
query/key/value kernels are ``(hidden, heads, head_dim)`` and the output
kernel ``(heads, head_dim, hidden)``; HF's ``Conv1D`` keeps ``(in, out)``
matrices with q|k|v concatenated along ``out`` in ``c_attn``. Dense kernels
are already ``(in, out)``, so the MLP maps as-is.

Padding ids. The embedding has ``padded_vocab_size`` rows (a multiple of 64);
the exported model has them too, so its logits have the padded width exactly
like :func:`model.gpt2.logits`. Neither masks them in the raw logits; the
generation config lists them in ``suppress_tokens`` so ``generate`` never picks
them (as :mod:`model.generate` masks them to -inf).

Tokenizer. ``tokenizer.json`` + ``tokenizer_config.json`` are a fast tokenizer
built from ours by :mod:`model.hf_tokenizer` (bytes and unigram sentencepiece
kinds) and loaded back with ``AutoTokenizer`` before publishing: any text of
its check set that gets other ids is an :class:`ExportError`. The export also
carries ``spm.model`` and our own artifact; README.md names the two inputs
that differ on purpose.

Verification: the staged directory is loaded with
``GPT2LMHeadModel.from_pretrained(dir, local_files_only=True)`` and its logits
on a fixed batch of ids are compared with ours; a difference ≥ 1e-4 is an
:class:`ExportError` and nothing is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time

import numpy as np

from infra import stage, storage
from model.presets import ModelError

ACTIVATION = "gelu_new"     # KerasHub's GPT2Backbone uses keras_utils.gelu_approximate (tanh form)
LAYER_NORM_EPS = 1e-5       # KerasHub's GPT2Backbone: TransformerDecoder(layer_norm_epsilon=1e-05), final LN 1e-05
TOLERANCE = 1e-4            # max abs logit difference (float32) accepted by the verification
TOKENIZER_COPY = "gpt2ja_tokenizer"
WEIGHTS_FILE = "model.safetensors"
STAGE = "export"
STAGE_VERSION = 2           # bump when the exported files change for the same run


class ExportError(ModelError):
    """An export that cannot be written or does not reproduce the run: one line naming the run and the fix."""


def hf_config(cfg, eos_id: int) -> dict:
    """The ``config.json`` of a ``GPT2LMHeadModel`` with the shape of ``cfg`` (a ModelConfig)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.padded_vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.hidden_dim,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_dim,
        "activation_function": ACTIVATION,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        # no pad_token_id here (as OpenAI's GPT-2 config): pad = eos would make GPT2Model warn about padding at
        # every prompt, which starts with the document-start eos; generation_config.json has pad = eos
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "gpt2ja_vocab_size": cfg.vocab_size,  # ids ≥ this are padding rows, never produced by the tokenizer
    }


def hf_state_dict(backbone) -> dict[str, np.ndarray]:
    """KerasHub ``GPT2Backbone`` weights → ``{HF GPT2LMHeadModel name: float32 array}`` (lm_head is tied)."""
    def arr(v) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float32))

    hidden = backbone.hidden_dim
    out = {
        "transformer.wte.weight": arr(backbone.token_embedding.embeddings),
        "transformer.wpe.weight": arr(backbone.position_embedding.position_embeddings),
        "transformer.ln_f.weight": arr(backbone.layer_norm.gamma),
        "transformer.ln_f.bias": arr(backbone.layer_norm.beta),
    }
    for i, layer in enumerate(backbone.transformer_layers):
        p = f"transformer.h.{i}."
        att = layer._self_attention_layer
        q, k, v = att._query_dense, att._key_dense, att._value_dense
        out[p + "attn.c_attn.weight"] = np.concatenate(
            [arr(d.kernel).reshape(hidden, hidden) for d in (q, k, v)], axis=1)           # (H, 3H)
        out[p + "attn.c_attn.bias"] = np.concatenate([arr(d.bias).reshape(hidden) for d in (q, k, v)])
        out[p + "attn.c_proj.weight"] = arr(att._output_dense.kernel).reshape(hidden, hidden)  # (heads·hd, H)
        out[p + "attn.c_proj.bias"] = arr(att._output_dense.bias)
        out[p + "ln_1.weight"] = arr(layer._self_attention_layer_norm.gamma)
        out[p + "ln_1.bias"] = arr(layer._self_attention_layer_norm.beta)
        out[p + "ln_2.weight"] = arr(layer._feedforward_layer_norm.gamma)
        out[p + "ln_2.bias"] = arr(layer._feedforward_layer_norm.beta)
        out[p + "mlp.c_fc.weight"] = arr(layer._feedforward_intermediate_dense.kernel)      # (H, I)
        out[p + "mlp.c_fc.bias"] = arr(layer._feedforward_intermediate_dense.bias)
        out[p + "mlp.c_proj.weight"] = arr(layer._feedforward_output_dense.kernel)          # (I, H)
        out[p + "mlp.c_proj.bias"] = arr(layer._feedforward_output_dense.bias)
    return {name: np.ascontiguousarray(a) for name, a in out.items()}


def generation_config(cfg, eos_id: int) -> dict:
    """``generation_config.json``: ``gpt2ja generate``'s sampling defaults, padding ids suppressed.

    No ``max_length``: ``max_new_tokens`` is half the context (our generator's
    default ``keep``), so a prompt of up to half the context plus the new tokens
    fits the position embedding (transformers cannot slide the window as ours does).
    """
    from model.generate import DEFAULT_SAMPLING

    return {
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "suppress_tokens": list(range(cfg.vocab_size, cfg.padded_vocab_size)),
        "do_sample": True,
        "temperature": float(DEFAULT_SAMPLING["temperature"]),
        "top_k": int(DEFAULT_SAMPLING["top_k"]),   # 0: off, in transformers as in ours
        "top_p": float(DEFAULT_SAMPLING["top_p"]),
        "max_new_tokens": max(1, cfg.context_length // 2),
    }


def verification_ids(cfg, batch: int = 2, length: int = 16) -> np.ndarray:
    """A fixed ``(batch, T)`` batch of real (non-padding) ids used to compare logits."""
    rng = np.random.default_rng(1234)
    return rng.integers(0, cfg.vocab_size, size=(batch, min(length, cfg.context_length)), dtype=np.int64)


def load_hf(export_dir: str):
    """``GPT2LMHeadModel`` from a local export directory (no network), float32, eval mode."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(export_dir, local_files_only=True, dtype=torch.float32)
    return model.eval()


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids, dtype=np.int64))).logits.float().numpy()


def max_logit_diff(run, export_dir: str, ids: np.ndarray | None = None) -> float:
    """Max abs difference between the run's logits and the exported model's on ``ids``."""
    from model import gpt2

    ids = verification_ids(run.config) if ids is None else np.asarray(ids)
    ours = gpt2.logits(run.model, ids.astype(np.int32)).numpy()
    theirs = hf_logits(load_hf(export_dir), ids)
    if ours.shape != theirs.shape:
        return float("inf")
    return float(np.max(np.abs(ours - theirs)))


# ----------------------------------------------------------------- the model card (README.md)

#: what the Hub's metadata says about the corpus, by the Document ``source`` that crawled it
SOURCE_NAMES = {"aozora": "aozora-bunko", "web": "web-crawl", "files": "local-files"}
#: the Hub's licence ids for the Creative Commons licences it knows (others are "other")
HUB_CC_LICENSES = {"cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
                   "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
                   "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cc0-1.0"}
_CC_RE = re.compile(r"creativecommons\.org/(?:licenses/(?P<kind>[a-z-]+)/(?P<version>\d+\.\d+)"
                    r"|publicdomain/(?P<zero>zero)/1\.0)")
PUBLIC_DOMAIN = "public-domain"


def license_class(note: str) -> str:
    """A document's ``license`` note → ``public-domain``, a Hub CC id (``cc-by-4.0``), ``""`` (none) or the note."""
    note = (note or "").strip()
    m = _CC_RE.search(note)
    if m:
        cc = "cc0-1.0" if m.group("zero") else f"cc-{m.group('kind')}-{m.group('version')}"
        return cc if cc in HUB_CC_LICENSES else note
    if note.lower().startswith("public domain"):
        return PUBLIC_DOMAIN
    return note


def corpus_licenses(run_uri: str, hparams: dict) -> tuple[dict, dict, str | None]:
    """``({licence class: documents}, {source: documents}, corpus URI)`` of the corpus the run was trained on.

    Followed through the manifests: the run's shards (hparams) → their ``clean``
    input → every document of its splits (each one carries its ``license``).
    Empty when a link is missing (a run trained on data without manifests).
    """
    from collections import Counter

    from corpus.jsonl import read_documents
    from corpus.split import SPLITS
    from model import runs

    data = runs.data_uri(hparams, run_uri)
    try:
        shards = storage.read_manifest(data) if data else None
        corpus = None
        for ref in (shards or {}).get("inputs", []):
            manifest = storage.read_manifest(stage.input_uri(shards, ref["uri"]))
            if manifest and manifest.get("stage") == "clean":
                corpus = manifest["uri"]
        if corpus is None:
            return {}, {}, None
        licences, sources = Counter(), Counter()
        for doc in read_documents([storage.join(corpus, split) for split in SPLITS]):
            licences[license_class(doc.license)] += 1
            sources[doc.source] += 1
    except (storage.StorageError, ValueError) as err:
        raise ExportError(f"export of {run_uri}: cannot read the licences of its corpus ({err}); "
                          "fix or rebuild the corpus the run's shards name") from None
    return dict(licences), dict(sources), corpus


def hub_license(licences: dict) -> tuple[str, str | None, str | None, str]:
    """``(license, license_name, license_link, why)`` of the Hub metadata from the corpus's licence classes.

    * every document public domain (Aozora Bunko's expired-copyright works) →
      ``other`` / ``public-domain`` with Aozora's terms as the link: the texts were
      never *dedicated* to the public domain (``cc0-1.0``, ``pddl`` are dedications
      their authors did not make) and their status is Japan's copyright term,
      which other countries' laws need not share;
    * every document under one Creative Commons licence the Hub knows → that id;
    * a document without a licence note, or no corpus found → ``unknown``;
    * a mixture → ``other`` / ``mixed``, the card lists the licences with counts.
    """
    if not licences or "" in licences:
        return "unknown", None, None, ("some documents carry no licence note" if licences else
                                       "the corpus the run was trained on could not be followed from its manifests")
    if len(licences) > 1:
        return "other", "mixed", None, "the corpus mixes licences (below); each document keeps its own"
    (only,) = licences
    if only == PUBLIC_DOMAIN:
        return ("other", PUBLIC_DOMAIN, "https://www.aozora.gr.jp/guide/kijyunn.html",
                "every document is a public-domain work (copyright expired under Japanese law) as Aozora Bunko "
                "lists it; not `cc0-1.0`: nobody dedicated these texts, their status is a term of Japanese law "
                "and may differ elsewhere")
    if only in HUB_CC_LICENSES:
        return only, None, None, f"every document is under {only}"
    return "other", "corpus-license", None, f"every document says: {only}"


def read_eval(run_uri: str) -> dict | None:
    """The run's evaluation: ``{run}/eval/eval.json`` (the evaluate stage), else ``{run}/eval.json``; or None."""
    from model import runs
    from model.evaluate import EVAL_DIR

    for uri in (storage.join(run_uri, EVAL_DIR, runs.EVAL_JSON), storage.join(run_uri, runs.EVAL_JSON)):
        try:
            return json.loads(storage.read_text(uri))
        except (storage.StorageError, ValueError):
            continue
    return None


def _num(value, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


#: names of the compression baselines of eval.json (model/baselines.py), as the card's table shows them
BASELINE_NAMES = {"ppmd_order8": "PPMd order 8", "ppmd_order8_primed": "PPMd order 8 primed with training text",
                  "gzip": "gzip -9", "xz": "xz -9e"}


def baseline_rows(baselines: dict) -> list[tuple[str, float | None, float | None]]:
    """``(name, bits/char, bits/byte)`` of each baseline in eval.json's ``baselines``.

    Flat, as model/baselines.py writes it (``ppmd_order8_bits_per_character``,
    ``ppmd_order8_bits_per_byte``, …, one pair per compressor), or nested
    (``{"ppmd": {"bits_per_character": …, "bits_per_byte": …}}``). A figure that is
    None (e.g. no priming sample) is a row of dashes.
    """
    rows = []
    for key, value in baselines.items():
        if isinstance(value, dict):
            rows.append((key, value.get("bits_per_character"), value.get("bits_per_byte")))
        elif key.endswith("_bits_per_character"):
            name = key[:-len("_bits_per_character")]
            rows.append((name, value, baselines.get(f"{name}_bits_per_byte")))
    return [(BASELINE_NAMES.get(name, name), bpc, bpb) for name, bpc, bpb in rows]


def eval_table(result: dict) -> list[str]:
    """Markdown rows: the model's bits/char and bits/byte, then each entry of ``baselines`` (e.g. PPMd)."""
    rows = ["| model | bits per character | bits per byte | token perplexity |", "|---|---|---|---|",
            f"| this model (step {result.get('step', '?')}) | {_num(result.get('bits_per_character'))} | "
            f"{_num(result.get('bits_per_byte'))} | {_num(result.get('token_perplexity'), '.2f')} |"]
    rows += [f"| baseline: {name} | {_num(bpc)} | {_num(bpb)} | – |"
             for name, bpc, bpb in baseline_rows(result.get("baselines") or {})]
    return rows


def model_card(run, hf_refused: str | None, licences: dict, sources: dict, evaluation: dict | None,
               has_spm: bool) -> str:
    """README.md: Hub metadata (YAML, built with huggingface_hub's ModelCardData) and the card's text."""
    from huggingface_hub import ModelCardData

    cfg, tok, hp = run.config, run.tokenizer, run.hparams
    params = int(run.model.count_params())
    license_id, license_name, license_link, why = hub_license(licences)
    data = ModelCardData(
        language=["ja"], license=license_id, license_name=license_name, license_link=license_link,
        library_name="transformers", pipeline_tag="text-generation",
        tags=["gpt2", "japanese", "gpt2ja", "causal-lm", f"tokenizer-{tok.kind}"],
        datasets=sorted({SOURCE_NAMES.get(s, s) for s in sources}) or None,
        metrics=["bits_per_character", "bits_per_byte", "perplexity"])
    train = hp.get("train") or {}
    tokens = train.get("batch_tokens", 0) * run.step
    sampling = generation_config(cfg, tok.eos_id)
    preset = train.get("preset") or (f"fine-tuned from {train['init_from']}" if train.get("init_from") else "custom")
    lines = [
        f"# gpt2ja GPT-2 ({preset}, {tok.kind} tokenizer, {cfg.vocab_size:,} ids)", "",
        f"A Japanese GPT-2 trained from scratch by gpt2ja: {cfg.num_layers} layers, {cfg.hidden_dim} wide, "
        f"{cfg.num_heads} heads, {cfg.context_length} positions, {params:,} parameters.", "",
        "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline", "",
        'model = AutoModelForCausalLM.from_pretrained("path/or/repo")   # GPT2LMHeadModel',
        'tok = AutoTokenizer.from_pretrained("path/or/repo")',
        'out = model.generate(**tok("吾輩は猫である。", return_tensors="pt"))   # samples with our defaults',
        "print(tok.decode(out[0], skip_special_tokens=True))", "",
        'pipe = pipeline("text-generation", model="path/or/repo")',
        'pipe("吾輩は猫である。", handle_long_generation="hole")', "```", "",
        f"* The tokenizer puts `<|endoftext|>` (id {tok.eos_id}) before every text, as training put it at every "
        "document start. It is also the pad token (of the tokenizer and generation_config.json; config.json has "
        "none, as OpenAI's GPT-2): pads are told apart by the attention mask, which the tokenizer always "
        "returns; pass it to `generate` (`**tok(...)` does). Padding and truncation are on the left.",
        f"* The context is {cfg.context_length} tokens (`model_max_length`), and the prompt and the new tokens "
        "must fit in it: transformers cannot slide the window as `gpt2ja generate` does. Cut a long prompt "
        "from the left: `tok(prompt, truncation=True, max_length=model_max_length - max_new_tokens)` keeps the "
        "document start and the prompt's end; the pipeline does the same with `handle_long_generation=\"hole\"`. "
        "An untruncated prompt longer than the context fails in GPT-2's position embedding.", "",
        "## Sampling", "",
        f"`generation_config.json` samples with the defaults of `gpt2ja generate`: temperature "
        f"{sampling['temperature']}, top-k {sampling['top_k'] or 'off (0)'}, top-p {sampling['top_p']}, "
        f"at most {sampling['max_new_tokens']} new tokens (half the context). They are the decoding closest to "
        "human text in gpt2ja's sampling study (docs/studies/sampling.md). Filters apply in transformers' order "
        "(temperature, top-k, top-p), the same as ours; "
        f"ids ≥ {cfg.vocab_size} (embedding rows padding the vocabulary to {cfg.padded_vocab_size}) are "
        "suppressed. Greedy decoding (`do_sample=False`) gives the same ids as `gpt2ja generate --greedy` "
        "(tested).", "",
        "## Evaluation", ""]
    if evaluation:
        lines += [f"On {', '.join(f'`{t}`' for t in evaluation.get('texts_from', [])) or 'held-out text'}: "
                  f"{evaluation.get('characters', 0):,} held-out characters, scored as documents "
                  "(`<|endoftext|>` then the text). Bits per character and per UTF-8 byte compare models "
                  "whatever their tokenizer; token perplexity does not.", "", *eval_table(evaluation), ""]
    else:
        lines += ["No evaluation was found with the run (`gpt2ja eval` writes eval.json).", ""]
    lines += [
        "## Training", "",
        f"* Preset `{preset}`, {run.step:,} "
        f"optimizer steps of {train.get('batch_tokens', 0):,} tokens: {tokens:,} tokens seen, sequences of "
        f"{(hp.get('data') or {}).get('seq_len', cfg.context_length)} tokens, each document starting with "
        "`<|endoftext|>`.",
        f"* AdamW, peak learning rate {train.get('learning_rate')}, {train.get('warmup_steps')} warmup steps, "
        f"cosine decay, weight decay {train.get('weight_decay')}, precision {train.get('mixed_precision', 'off')}.",
        "* Trained with TensorFlow/KerasHub; the export's logits match the run's (max abs difference < 1e-4, "
        "float32), checked before it was written.", "",
        "## Data and licence", ""]
    if licences:
        lines += [f"Licence metadata `{license_id}`" + (f" (`{license_name}`)" if license_name else "")
                  + f": {why}.", "", "| licence of the documents | documents |", "|---|---|"]
        lines += [f"| {name or '(none given)'} | {n:,} |" for name, n in sorted(licences.items())]
        lines += ["", "Sources: " + ", ".join(f"{s} ({n:,} documents)" for s, n in sorted(sources.items()))
                  + ". The `datasets` metadata names these sources, not Hub dataset repositories.", ""]
    else:
        lines += [f"Licence metadata `{license_id}`: {why}.", ""]
    lines += [
        "## Limits", "",
        "* A small model trained on a narrow corpus: fluent-looking layout, little meaning; it is not "
        "instruction-tuned and states no facts reliably.",
        "* Pre-war literary Japanese (Aozora Bunko) shapes its style and vocabulary when that is the corpus; "
        "it may reproduce the views and language of its sources.",
        f"* At most {cfg.context_length} tokens of context.", "",
        "## Files and tokenizer", "",
        f"* `config.json`: `vocab_size` {cfg.padded_vocab_size} = the tokenizer's {cfg.vocab_size} ids padded to a "
        "multiple of 64; activation `gelu_new` (KerasHub's tanh-approximated GELU), LayerNorm eps 1e-5.",
        ("* `tokenizer.json`: a fast tokenizer built from ours and checked id for id (and decoded text) on a "
         "fixed set of texts before export. Two inputs differ on purpose: the literal text `<|endoftext|>` is "
         "the special token here (ours reads it as characters), and a literal \"▁\" (U+2581) reads as a space "
         "marker here (ours spells it in bytes)." if hf_refused is None
         else f"* No `AutoTokenizer` is shipped: {hf_refused}."),
    ]
    if has_spm:
        lines.append("* `spm.model`: our sentencepiece model. `sentencepiece.SentencePieceProcessor(model_file=...)`"
                     " `.encode(text)` gives our ids, except that we encode a literal \"▁\" (U+2581) as its three"
                     " UTF-8 byte pieces (plain sentencepiece would turn it into a space).")
    lines.append(f"* `{TOKENIZER_COPY}/`: the complete gpt2ja tokenizer artifact (with its manifest): "
                 f"`tokenization.tokenizer.Tokenizer.load(\"{TOKENIZER_COPY}\")` gives exactly the ids the model "
                 "was trained on (without the leading `<|endoftext|>`).")
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def _write_hf_tokenizer(tok, context_length: int, out_dir: str, run_uri: str) -> str | None:
    """``tokenizer.json`` + config for ``AutoTokenizer``, verified; the reason when the kind has none."""
    from transformers import AutoTokenizer

    from model import hf_tokenizer

    try:
        hf_tokenizer.save(hf_tokenizer.build(tok, context_length), out_dir)
    except hf_tokenizer.HFTokenizerError as err:
        return str(err)
    # a long model_max_length: the check texts may be longer than a small context (it would only warn)
    loaded = AutoTokenizer.from_pretrained(out_dir, local_files_only=True, model_max_length=1 << 30)
    bad = hf_tokenizer.mismatches(tok, loaded)
    if bad:
        raise ExportError(f"export of {run_uri}: the transformers tokenizer gives other ids than ours on "
                          f"{len(bad)} check text(s), first {bad[0][:40]!r}; nothing was published")
    return None


def export_hf(run_uri: str, out_uri: str) -> str:
    """Export the newest checkpoint of ``run_uri`` to ``out_uri`` (local dir or ``gs://``); returns ``out_uri``.

    The export stage, built through :func:`infra.stage.run_stage` (under
    ``out_uri``'s lock; another writer gets :class:`infra.stage.LockHeld`):
    staged in a local temp dir, verified against the run (logits on a fixed
    batch), then its files published with :func:`infra.storage.upload_dir` and
    ``_MANIFEST.json`` (fingerprint of the run's manifest and the export format)
    written last. An export whose manifest matches and verifies is not redone.
    A run that cannot be loaded is the ModelError of :func:`model.runs.load_run`;
    an export that does not match is an :class:`ExportError`.
    """
    started = time.monotonic()
    if out_uri.rstrip("/") == run_uri.rstrip("/"):
        raise ExportError(f"export of {run_uri}: give it a directory of its own (e.g. {run_uri}/export/hf), "
                          "not the run itself")
    evaluation = read_eval(run_uri)  # its figures go into the model card: a new evaluation redoes the export
    config = {"format": "hf", "version": STAGE_VERSION, "eval_sha256": hashlib.sha256(
        json.dumps(evaluation, sort_keys=True).encode()).hexdigest() if evaluation else None}
    try:
        run_manifest = storage.read_manifest(run_uri)
        if run_manifest is not None and not stage.verify(out_uri, storage.fingerprint(config, [run_manifest]))[1]:
            return out_uri  # up to date: this run, this format (checked again under the lock)
    except storage.StorageError as err:
        raise ExportError(f"export of {run_uri}: {err}") from None
    try:
        import safetensors.numpy
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise ExportError(f"export of {run_uri}: {err.name} is not installed; "
                          "pip install torch transformers safetensors") from None
    from model.runs import TOKENIZER_DIR, load_run

    loaded = []
    if run_manifest is not None:
        source = run_manifest
    else:  # an unfinished run (no manifest yet) is identified by its hparams and newest checkpoint
        loaded.append(load_run(run_uri, dtype="float32"))
        source = {"uri": run_uri, "fingerprint": hashlib.sha256(json.dumps(
            [loaded[0].hparams, os.path.basename(loaded[0].checkpoint)], sort_keys=True).encode()).hexdigest()}
    fp = storage.fingerprint(config, [source])

    def build() -> dict:
        run = loaded[0] if loaded else load_run(run_uri, dtype="float32")
        cfg, tok = run.config, run.tokenizer
        with tempfile.TemporaryDirectory(prefix=f"gpt2ja-export-{os.getpid()}-") as tmp:
            def write_json(name: str, value: dict) -> None:
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    json.dump(value, f, indent=2, ensure_ascii=False)
                    f.write("\n")

            write_json("config.json", hf_config(cfg, tok.eos_id))
            write_json("generation_config.json", generation_config(cfg, tok.eos_id))
            # one metadata key: safetensors keeps metadata in a hash map whose order changes from run to run,
            # and the same run must export to the same bytes (which run and step: the export's manifest)
            safetensors.numpy.save_file(hf_state_dict(run.model.backbone), os.path.join(tmp, WEIGHTS_FILE),
                                        metadata={"format": "pt"})
            copy = os.path.join(tmp, TOKENIZER_COPY)
            # the run's own tokenizer artifact, byte for byte (its manifest included): re-saving it would stamp
            # a new creation time, and the same run must export to the same bytes
            storage.download_dir(storage.join(run_uri, TOKENIZER_DIR), copy)
            if os.path.exists(os.path.join(copy, "spm.model")):
                shutil.copyfile(os.path.join(copy, "spm.model"), os.path.join(tmp, "spm.model"))
            hf_refused = _write_hf_tokenizer(tok, cfg.context_length, tmp, run_uri)
            licences, sources, _ = corpus_licenses(run_uri, run.hparams)
            with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
                f.write(model_card(run, hf_refused, licences, sources, evaluation,
                                   os.path.exists(os.path.join(tmp, "spm.model"))))

            try:
                diff = max_logit_diff(run, tmp)
            except Exception as err:  # noqa: BLE001 - any loader failure is one line
                first = " ".join(str(err).split())[:200]
                raise ExportError(f"export of {run_uri}: transformers cannot load the exported model "
                                  f"({type(err).__name__}: {first}); nothing was published") from None
            if not diff < TOLERANCE:
                raise ExportError(f"export of {run_uri}: transformers logits differ from the run's by {diff:.3g} "
                                  f"(limit {TOLERANCE:g}); the weight mapping is wrong, nothing was published")
            files = [storage.file_info(p, root=tmp) for p in storage.list_files(tmp)]
            try:
                _publish_files(tmp, out_uri, {f["path"] for f in files})
            except storage.StorageError as err:
                raise ExportError(f"export of {run_uri}: {err}") from None
        return storage.build_manifest(
            stage=STAGE, config=config, inputs=[source], files=files,
            counts={"parameters": int(run.model.count_params()), "step": run.step, "vocab_size": cfg.vocab_size},
            timings={"seconds": round(time.monotonic() - started, 3)},
            extra={"max_logit_diff": diff, "tolerance": TOLERANCE, "checkpoint": os.path.basename(run.checkpoint)})

    # prune=False: ``out_uri`` may be any folder; _publish_files removes what an earlier export left
    stage.run_stage(STAGE, out_uri, fingerprint=fp, build=build, inputs=[run_uri], prune=False)
    return out_uri


#: the files of an export's top level that only some exports have (by tokenizer kind)
_OPTIONAL_FILES = ("spm.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _publish_files(staged: str, out_uri: str, paths: set[str]) -> None:
    """Upload the staged export (no manifest: the export stage writes it last) over what ``out_uri`` held.

    Files an earlier export of another tokenizer kind left there (an AutoTokenizer
    over a sentencepiece BPE export, an old tokenizer copy) are removed first.
    """
    for name in _OPTIONAL_FILES:
        if name not in paths:
            storage.delete(storage.join(out_uri, name))
    storage.delete(storage.join(out_uri, TOKENIZER_COPY))
    storage.upload_dir(staged, out_uri)


def push_to_hub(export_uri: str, repo_id: str, *, private: bool = False, endpoint: str | None = None,
                token: str | None = None) -> str:
    """Upload a finished export (not its ``_MANIFEST.json``) to the Hub model repo ``repo_id``; the commit URL.

    ``huggingface_hub``'s ``HfApi.create_repo`` (``exist_ok``) then ``upload_folder``
    (one commit). The endpoint is ``endpoint``, else ``HF_ENDPOINT`` (read now, not
    when huggingface_hub was imported), else huggingface.co; the token is ``token``,
    else ``HF_TOKEN``, else huggingface_hub's own login. A ``gs://`` export is
    downloaded to a temp dir first. Errors are one ExportError line.

    Example::

        push_to_hub("data/export/small-sp16k-hf", "you/gpt2ja-small")   # HF_TOKEN=hf_… in the environment
    """
    from huggingface_hub import HfApi

    manifest = storage.read_manifest(export_uri)
    if manifest is None or manifest.get("stage") != STAGE:
        raise ExportError(f"push of {export_uri}: not a finished export (no export _MANIFEST.json); "
                          "run `gpt2ja export hf` first")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token or os.environ.get("HF_TOKEN") or None)
    with tempfile.TemporaryDirectory(prefix="gpt2ja-push-") as tmp:
        local = storage.local_path(export_uri)
        if local is None:
            storage.download_dir(export_uri, tmp)
            local = tmp
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id, repo_type="model", folder_path=local,
                commit_message=f"gpt2ja export, step {manifest.get('counts', {}).get('step')}",
                ignore_patterns=[storage.MANIFEST, ".*.lock", "**/.*.lock"])
        except Exception as err:  # noqa: BLE001 - HTTP, auth and connection errors alike are one line
            first = " ".join(str(err).split())[:300]
            raise ExportError(f"push of {export_uri} to {repo_id} at {endpoint or 'huggingface.co'}: "
                              f"{type(err).__name__}: {first}; check HF_TOKEN (a write token) and the repo "
                              "name") from None
    return str(getattr(info, "commit_url", info))

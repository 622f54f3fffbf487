"""The model card (README.md) of a Hugging Face export: Hub metadata and the text people read first.

The metadata (YAML front matter, built with ``huggingface_hub``'s ``ModelCardData``)
says language ``ja``, the licence derived from the corpus's documents
(:func:`corpus_licenses` follows run → shards → clean corpus and reads each
document's ``license`` note; :func:`hub_license` turns the classes found into
the Hub's fields), the corpus sources, library and pipeline tag. The text has
how to load and sample it (our sampling defaults), the evaluation table from
``eval.json`` with its compression baselines, how the run was trained, and its
limits. Used by :func:`gpt2ja.model.export.export_hf`::

    licences, sources, _ = corpus_licenses(run_uri, run.hparams)
    text = model_card(run, hf_refused, licences, sources, read_eval(run_uri), ...)
"""

from __future__ import annotations

import json
import re

from gpt2ja.infra import stage, storage
from gpt2ja.model.export_common import TOKENIZER_COPY, ExportError, generation_config
from gpt2ja.model.generate import SAMPLING_STUDY

#: what the Hub's metadata says about the corpus, by the Document ``source`` that crawled it
SOURCE_NAMES = {"aozora": "aozora-bunko", "web": "web-crawl", "files": "local-files"}
#: the Hub's licence ids for the Creative Commons licences it knows (others are "other")
HUB_CC_LICENSES = {
    "cc-by-2.0",
    "cc-by-2.5",
    "cc-by-3.0",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-2.0",
    "cc-by-nc-3.0",
    "cc-by-nc-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0",
    "cc0-1.0",
}
_CC_RE = re.compile(
    r"creativecommons\.org/(?:licenses/(?P<kind>[a-z-]+)/(?P<version>\d+\.\d+)"
    r"|publicdomain/(?P<zero>zero)/1\.0)"
)
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

    from gpt2ja.corpus.jsonl import read_documents
    from gpt2ja.corpus.split import SPLITS
    from gpt2ja.model import runs

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
        raise ExportError(
            f"export of {run_uri}: cannot read the licences of its corpus ({err}); "
            "fix or rebuild the corpus the run's shards name"
        ) from None
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
        return (
            "unknown",
            None,
            None,
            (
                "some documents carry no licence note"
                if licences
                else "the corpus the run was trained on could not be followed from its manifests"
            ),
        )
    if len(licences) > 1:
        return "other", "mixed", None, "the corpus mixes licences (below); each document keeps its own"
    (only,) = licences
    if only == PUBLIC_DOMAIN:
        return (
            "other",
            PUBLIC_DOMAIN,
            "https://www.aozora.gr.jp/guide/kijyunn.html",
            "every document is a public-domain work (copyright expired under Japanese law) as Aozora Bunko "
            "lists it; not `cc0-1.0`: nobody dedicated these texts, their status is a term of Japanese law "
            "and may differ elsewhere",
        )
    if only in HUB_CC_LICENSES:
        return only, None, None, f"every document is under {only}"
    return "other", "corpus-license", None, f"every document says: {only}"


def read_eval(run_uri: str) -> dict | None:
    """The run's evaluation: ``{run}/eval/eval.json`` (the evaluate stage), else ``{run}/eval.json``; or None."""
    from gpt2ja.model import runs
    from gpt2ja.model.evaluate import EVAL_DIR

    for uri in (storage.join(run_uri, EVAL_DIR, runs.EVAL_JSON), storage.join(run_uri, runs.EVAL_JSON)):
        try:
            return json.loads(storage.read_text(uri))
        except (storage.StorageError, ValueError):
            continue
    return None


def _num(value, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


#: names of the compression baselines of eval.json (gpt2ja/model/baselines.py), as the card's table shows them
BASELINE_NAMES = {
    "ppmd_order8": "PPMd order 8",
    "ppmd_order8_primed": "PPMd order 8 primed with training text",
    "gzip": "gzip -9",
    "xz": "xz -9e",
}


def baseline_rows(baselines: dict) -> list[tuple[str, float | None, float | None]]:
    """``(name, bits/char, bits/byte)`` of each baseline in eval.json's ``baselines``.

    Flat, as gpt2ja/model/baselines.py writes it (``ppmd_order8_bits_per_character``,
    ``ppmd_order8_bits_per_byte``, …, one pair per compressor), or nested
    (``{"ppmd": {"bits_per_character": …, "bits_per_byte": …}}``). A figure that is
    None (e.g. no priming sample) is a row of dashes.
    """
    rows = []
    for key, value in baselines.items():
        if isinstance(value, dict):
            rows.append((key, value.get("bits_per_character"), value.get("bits_per_byte")))
        elif key.endswith("_bits_per_character"):
            name = key[: -len("_bits_per_character")]
            rows.append((name, value, baselines.get(f"{name}_bits_per_byte")))
    return [(BASELINE_NAMES.get(name, name), bpc, bpb) for name, bpc, bpb in rows]


def eval_table(result: dict) -> list[str]:
    """Markdown rows: the model's bits/char and bits/byte, then each entry of ``baselines`` (e.g. PPMd)."""
    rows = [
        "| model | bits per character | bits per byte | token perplexity |",
        "|---|---|---|---|",
        f"| this model (step {result.get('step', '?')}) | {_num(result.get('bits_per_character'))} | "
        f"{_num(result.get('bits_per_byte'))} | {_num(result.get('token_perplexity'), '.2f')} |",
    ]
    rows += [
        f"| baseline: {name} | {_num(bpc)} | {_num(bpb)} | – |"
        for name, bpc, bpb in baseline_rows(result.get("baselines") or {})
    ]
    return rows


def model_card(
    run, hf_refused: str | None, licences: dict, sources: dict, evaluation: dict | None, has_spm: bool
) -> str:
    """README.md: Hub metadata (YAML, built with huggingface_hub's ModelCardData) and the card's text."""
    from huggingface_hub import ModelCardData

    cfg, tok, hp = run.config, run.tokenizer, run.hparams
    params = int(run.model.count_params())
    license_id, license_name, license_link, why = hub_license(licences)
    data = ModelCardData(
        language=["ja"],
        license=license_id,
        license_name=license_name,
        license_link=license_link,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gpt2", "japanese", "gpt2ja", "causal-lm", f"tokenizer-{tok.kind}"],
        datasets=sorted({SOURCE_NAMES.get(s, s) for s in sources}) or None,
        metrics=["bits_per_character", "bits_per_byte", "perplexity"],
    )
    train = hp.get("train") or {}
    tokens = train.get("batch_tokens", 0) * run.step
    sampling = generation_config(cfg, tok.eos_id)
    preset = train.get("preset") or (f"fine-tuned from {train['init_from']}" if train.get("init_from") else "custom")
    lines = [
        f"# gpt2ja GPT-2 ({preset}, {tok.kind} tokenizer, {cfg.vocab_size:,} ids)",
        "",
        f"A Japanese GPT-2 trained from scratch by gpt2ja: {cfg.num_layers} layers, {cfg.hidden_dim} wide, "
        f"{cfg.num_heads} heads, {cfg.context_length} positions, {params:,} parameters.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/or/repo")   # GPT2LMHeadModel',
        'tok = AutoTokenizer.from_pretrained("path/or/repo")',
        'out = model.generate(**tok("吾輩は猫である。", return_tensors="pt"))   # samples with our defaults',
        "print(tok.decode(out[0], skip_special_tokens=True))",
        "",
        'pipe = pipeline("text-generation", model="path/or/repo")',
        'pipe("吾輩は猫である。", handle_long_generation="hole")',
        "```",
        "",
        f"* The tokenizer puts `<|endoftext|>` (id {tok.eos_id}) before every text, as training put it at every "
        "document start. It is also the pad token (of the tokenizer and generation_config.json; config.json has "
        "none, as OpenAI's GPT-2): pads are told apart by the attention mask, which the tokenizer always "
        "returns; pass it to `generate` (`**tok(...)` does). Padding and truncation are on the left.",
        f"* The context is {cfg.context_length} tokens (`model_max_length`), and the prompt and the new tokens "
        "must fit in it: transformers cannot slide the window as `gpt2ja generate` does. Cut a long prompt "
        "from the left: `tok(prompt, truncation=True, max_length=model_max_length - max_new_tokens)` keeps the "
        'document start and the prompt\'s end; the pipeline does the same with `handle_long_generation="hole"`. '
        "An untruncated prompt longer than the context fails in GPT-2's position embedding.",
        "",
        "## Sampling",
        "",
        f"`generation_config.json` samples with the defaults of `gpt2ja generate`: temperature "
        f"{sampling['temperature']}, top-k {sampling['top_k'] or 'off (0)'}, "
        f"top-p {sampling['top_p'] if sampling['top_p'] < 1 else 'off (1.0)'}, "
        f"at most {sampling['max_new_tokens']} new tokens (half the context). They are the decoding closest to "
        f"human text in gpt2ja's sampling study ({SAMPLING_STUDY}.md). Filters apply in transformers' order "
        "(temperature, top-k, top-p), the same as ours; "
        f"ids ≥ {cfg.vocab_size} (embedding rows padding the vocabulary to {cfg.padded_vocab_size}) are "
        "suppressed. Greedy decoding (`do_sample=False`) gives the same ids as `gpt2ja generate --greedy` "
        "(tested).",
        "",
        "## Evaluation",
        "",
    ]
    if evaluation:
        lines += [
            f"On {', '.join(f'`{t}`' for t in evaluation.get('texts_from', [])) or 'held-out text'}: "
            f"{evaluation.get('characters', 0):,} held-out characters, scored as documents "
            "(`<|endoftext|>` then the text). Bits per character and per UTF-8 byte compare models "
            "whatever their tokenizer; token perplexity does not.",
            "",
            *eval_table(evaluation),
            "",
        ]
    else:
        lines += ["No evaluation was found with the run (`gpt2ja eval` writes eval.json).", ""]
    lines += [
        "## Training",
        "",
        f"* Preset `{preset}`, {run.step:,} "
        f"optimizer steps of {train.get('batch_tokens', 0):,} tokens: {tokens:,} tokens seen, sequences of "
        f"{(hp.get('data') or {}).get('seq_len', cfg.context_length)} tokens, each document starting with "
        "`<|endoftext|>`.",
        f"* AdamW, peak learning rate {train.get('learning_rate')}, {train.get('warmup_steps')} warmup steps, "
        f"cosine decay, weight decay {train.get('weight_decay')}, precision {train.get('mixed_precision', 'off')}.",
        "* Trained with TensorFlow/KerasHub; the export's logits match the run's (max abs difference < 1e-4, "
        "float32), checked before it was written.",
        "",
        "## Data and licence",
        "",
    ]
    if licences:
        lines += [
            f"Licence metadata `{license_id}`" + (f" (`{license_name}`)" if license_name else "") + f": {why}.",
            "",
            "| licence of the documents | documents |",
            "|---|---|",
        ]
        lines += [f"| {name or '(none given)'} | {n:,} |" for name, n in sorted(licences.items())]
        lines += [
            "",
            "Sources: "
            + ", ".join(f"{s} ({n:,} documents)" for s, n in sorted(sources.items()))
            + ". The `datasets` metadata names these sources, not Hub dataset repositories.",
            "",
        ]
    else:
        lines += [f"Licence metadata `{license_id}`: {why}.", ""]
    lines += [
        "## Limits",
        "",
        "* A small model trained on a narrow corpus: fluent-looking layout, little meaning; it is not "
        "instruction-tuned and states no facts reliably.",
        "* Pre-war literary Japanese (Aozora Bunko) shapes its style and vocabulary when that is the corpus; "
        "it may reproduce the views and language of its sources.",
        f"* At most {cfg.context_length} tokens of context.",
        "",
        "## Files and tokenizer",
        "",
        f"* `config.json`: `vocab_size` {cfg.padded_vocab_size} = the tokenizer's {cfg.vocab_size} ids padded to a "
        "multiple of 64; activation `gelu_new` (KerasHub's tanh-approximated GELU), LayerNorm eps 1e-5.",
        (
            "* `tokenizer.json`: a fast tokenizer built from ours and checked id for id (and decoded text) on a "
            "fixed set of texts before export. Two inputs differ on purpose: the literal text `<|endoftext|>` is "
            'the special token here (ours reads it as characters), and a literal "▁" (U+2581) reads as a space '
            "marker here (ours spells it in bytes)."
            if hf_refused is None
            else f"* No `AutoTokenizer` is shipped: {hf_refused}."
        ),
    ]
    if has_spm:
        lines.append(
            "* `spm.model`: our sentencepiece model. `sentencepiece.SentencePieceProcessor(model_file=...)`"
            ' `.encode(text)` gives our ids, except that we encode a literal "▁" (U+2581) as its three'
            " UTF-8 byte pieces (plain sentencepiece would turn it into a space)."
        )
    lines.append(
        f"* `{TOKENIZER_COPY}/`: the complete gpt2ja tokenizer artifact (with its manifest): "
        f'`gpt2ja.tokenization.tokenizer.Tokenizer.load("{TOKENIZER_COPY}")` gives exactly the ids the model '
        "was trained on (without the leading `<|endoftext|>`)."
    )
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"

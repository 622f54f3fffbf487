"""The vocabulary study's report: the table, the plot, the CSV and the paragraphs written from the numbers.

Pure functions of the per-run rows that :func:`gpt2ja.studies.vocab.run_vocab_study`
collects (one row per tokenizer and seed), so the page can be rebuilt from the
artifacts alone and is byte-identical when they have not changed.

Example::

    summary = summarize(rows)            # one entry per tokenizer: seed means and spreads
    findings(cfg, summary)               # ["On the validation text the lowest bits per character is ..."]
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from gpt2ja.infra import storage
from gpt2ja.studies.report import duration, fmt, pyplot, save_png, table, write_csv

if TYPE_CHECKING:
    from gpt2ja.studies.vocab import VocabStudyConfig

VALIDATION, HELDOUT = "validation", "heldout"


CSV_COLUMNS = [
    "tokenizer",
    "kind",
    "vocab_size",
    "seed",
    "chars_per_token",
    "chars_per_token_validation",
    "steps",
    "batch_tokens",
    "train_tokens",
    "train_characters",
    "epochs",
    "embedding_params",
    "non_embedding_params",
    "params",
    "tokens_per_s",
    "train_seconds",
    "final_train_loss",
    "bpc_validation",
    "bpb_validation",
    "token_ppl_validation",
    "bpc_heldout",
    "bpb_heldout",
    "run",
    "machine",
]


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per tokenizer (config order): seed means, and ``*_spread`` (max − min) where there are 2+ seeds."""
    out, order = [], []
    for r in rows:
        if r["tokenizer"] not in order:
            order.append(r["tokenizer"])
    for name in order:
        group = [r for r in rows if r["tokenizer"] == name]
        entry = {
            k: group[0][k]
            for k in (
                "tokenizer",
                "kind",
                "vocab_size",
                "chars_per_token",
                "steps",
                "train_tokens",
                "train_characters",
                "embedding_params",
                "non_embedding_params",
                "params",
            )
        }
        entry["seeds"] = [r["seed"] for r in group]
        for key in (
            "bpc_validation",
            "bpb_validation",
            "bpc_heldout",
            "bpb_heldout",
            "tokens_per_s",
            "train_seconds",
            "final_train_loss",
        ):
            values = [r[key] for r in group if r[key] is not None]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}_spread"] = (max(values) - min(values)) if len(values) > 1 else None
        out.append(entry)
    return out


def plot(summary: list[dict], rows: list[dict], holdout: str):
    """Bits per character against vocabulary size (log axis): validation and held-out, each seed a dot."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100, sharey=True)
    markers = {"bytes": "s", "sentencepiece": "o", "mecab+sentencepiece": "^"}
    for ax, key, title in (
        (axes[0], "bpc_validation", "validation text (other works)"),
        (axes[1], "bpc_heldout", f"held-out author ({holdout_label(holdout)})"),
    ):
        for kind, color in (("bytes", "#666666"), ("sentencepiece", "#4a7ab8"), ("mecab+sentencepiece", "#d08030")):
            entries = sorted(
                (e for e in summary if e["kind"] == kind and e[key] is not None), key=lambda e: e["vocab_size"]
            )
            if not entries:
                continue
            ax.plot(
                [e["vocab_size"] for e in entries],
                [e[key] for e in entries],
                marker=markers[kind],
                color=color,
                label=kind,
                linestyle="-" if len(entries) > 1 else "none",
            )
            dots = [(r["vocab_size"], r[key]) for r in rows if r["kind"] == kind and r[key] is not None]
            ax.scatter(*zip(*dots), color=color, s=10, alpha=0.6)
        ax.set_xscale("log", base=2)
        sizes = sorted({e["vocab_size"] for e in summary})
        ax.set_xticks(sizes, [_size_label(v) for v in sizes])
        ax.minorticks_off()
        ax.set_xlabel("vocabulary size (ids, log scale)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bits per character (lower is better)")
    axes[0].legend()
    fig.suptitle("Vocabulary size vs bits per character (same model shape, same training characters)")
    fig.tight_layout()
    return fig


def _size_label(v: int) -> str:
    """257 → "257", 16000 → "16k", 1500 → "1.5k"."""
    return str(v) if v < 1000 else f"{v / 1000:g}k"


def holdout_label(name: str) -> str:
    """Plot labels stay ASCII (no CJK font is assumed)."""
    return name if name.isascii() else "its works"


def write_report(
    cfg: VocabStudyConfig, rows: list[dict], corpus: dict, pool: dict, texts: dict[str, str], *, command: str
) -> dict[str, str]:
    """``{out}/{name}.md``, ``{name}-bpc.png`` and ``{name}.csv`` from the per-run rows; returns their URIs."""
    summary = summarize(rows)
    md_uri = storage.join(cfg.out, f"{cfg.name}.md")
    png_uri = storage.join(cfg.out, f"{cfg.name}-bpc.png")
    csv_uri = storage.join(cfg.out, f"{cfg.name}.csv")
    write_csv(csv_uri, rows, CSV_COLUMNS)
    save_png(plot(summary, rows, cfg.holdout_author), png_uri)
    eval_counts = {k: storage.read_manifest(u)["counts"] for k, u in texts.items()}
    storage.write_text(
        md_uri,
        markdown(
            cfg,
            rows,
            summary,
            corpus,
            pool,
            eval_counts,
            command=command,
            png=png_uri.rsplit("/", 1)[-1],
            csv=csv_uri.rsplit("/", 1)[-1],
        ),
    )
    return {"markdown": md_uri, "png": png_uri, "csv": csv_uri}


def _pm(entry: dict, key: str, spec: str = ".3f") -> str:
    value, spread = entry.get(key), entry.get(f"{key}_spread")
    if spread is None:
        return fmt(value, spec)
    return f"{fmt(value, spec)} ± {spread / 2:{spec}}"


def markdown(
    cfg: VocabStudyConfig,
    rows: list[dict],
    summary: list[dict],
    corpus: dict,
    pool: dict,
    eval_counts: dict,
    *,
    command: str,
    png: str,
    csv: str,
) -> str:
    """The report page: setup, table, plot, findings from the numbers, limits, how to reproduce."""
    import yaml

    from gpt2ja.model.presets import PRESETS

    shape = PRESETS[cfg.preset]["config"]
    splits = corpus["counts"]["splits"]
    machines = sorted({r["machine"] for r in rows})
    cols = [
        "tokenizer",
        "kind",
        "vocab",
        "chars/token",
        "steps",
        "train tokens",
        "embedding params",
        "non-embedding params",
        "tokens/s",
        "train time",
        "bits/char validation",
        "bits/byte validation",
        "bits/char held-out",
        "bits/byte held-out",
    ]
    body = [
        [
            e["tokenizer"],
            e["kind"],
            f"{e['vocab_size']:,}",
            f"{e['chars_per_token']:.3f}",
            f"{e['steps']:,}",
            f"{e['train_tokens']:,}",
            f"{e['embedding_params']:,}",
            f"{e['non_embedding_params']:,}",
            fmt(e["tokens_per_s"], ",.0f"),
            duration(e["train_seconds"]),
            _pm(e, "bpc_validation", ".4f"),
            _pm(e, "bpb_validation", ".4f"),
            _pm(e, "bpc_heldout", ".4f"),
            _pm(e, "bpb_heldout", ".4f"),
        ]
        for e in summary
    ]
    lines = [
        f"# Vocabulary size: {len(summary)} tokenizers, one model shape, the same training text",
        "",
        "The seed project guessed, without measuring, that a small (117M) GPT-2 may do better with a vocabulary "
        "smaller than GPT-2's 50k. This page measures it at the scale configured below. Vocabularies are compared "
        "in bits per character (and per UTF-8 byte) of raw text: token perplexity depends on the tokenizer and "
        "cannot compare them.",
        "",
        "## Setup",
        "",
        f"- Corpus: `{cfg.corpus}` (the `files` source over `{cfg.source}`, then `clean`): "
        f"{splits['train']['documents']:,} training documents ({splits['train']['characters']:,} characters), "
        f"{splits['validation']['documents']:,} validation documents. Every work of **{cfg.holdout_author}**"
        f"{' (also spelt ' + ', '.join(cfg.holdout_aliases) + ')' if cfg.holdout_aliases else ''} is in the "
        "validation split: no tokenizer and no model saw it.",
        f"- Tokenizers: trained on the train split ({cfg.tokenizer_sample_sentences:,} sampled sentences each"
        + "".join(f"; {t.name}: {t.sample_sentences:,}" for t in cfg.tokenizers if t.sample_sentences)
        + (
            ", because pieces cannot cross MeCab's word boundaries and fewer sentences hold too few distinct pieces"
            if any(t.sample_sentences and t.kind == "mecab+sentencepiece" for t in cfg.tokenizers)
            else ""
        )
        + ").",
        f"- Training text: the pool `{storage.join(cfg.root, 'pool')}`, {pool['counts']['documents']:,} chunks of "
        f"≤ {cfg.pool_chunk_chars:,} characters sampled by hash from the whole train split "
        f"({pool['counts']['characters']:,} characters, the same for every model). Every model trains on "
        f"**{cfg.train_characters:,} characters**: steps = characters ÷ (batch of {cfg.batch_tokens:,} tokens × "
        "the tokenizer's characters per token on the pool, end-of-text ids included), rounded up.",
        f"- Model: preset `{cfg.preset}` ({shape['num_layers']} layers × {shape['hidden_dim']} wide, "
        f"{shape['num_heads']} heads, dropout {shape['dropout']}), context {cfg.seq_len} tokens, AdamW at "
        f"{cfg.learning_rate:g} with {cfg.warmup_fraction:.0%} warmup then cosine decay; the output layer is the "
        "tied token embedding, so the vocabulary changes the embedding parameters only.",
        f"- Seeds: {_seeds_line(summary)}.",
        f"- Evaluation: `{VALIDATION}` = {eval_counts[VALIDATION]['characters']:,} characters from "
        f"{eval_counts[VALIDATION]['documents']} validation documents of other authors; `held-out` = "
        f"{eval_counts[HELDOUT]['characters']:,} characters from {eval_counts[HELDOUT]['documents']} works of "
        f"{cfg.holdout_author}; at most {cfg.eval_chunk_chars:,} characters per document, each scored as a "
        "document (`EOS text`) with a sliding window "
        f"(stride {cfg.eval_stride or 'half the context'}).",
        "",
        "## Results",
        "",
        table(cols, body, align={"tokenizer": "l", "kind": "l"}),
        "",
        "Values with ± are the mean over seeds ± half the range. chars/token: characters per token on the "
        "training pool; tokens/s: median of the logged training windows after the first; train time: the "
        "training loop, building the step function included (not tokenizer, shards or evaluation). "
        f"Every run: [`{csv}`]({csv}).",
        "",
        f"![bits per character against vocabulary size]({png})",
        "",
        "## What the figures show",
        "",
        *findings(cfg, summary),
        "",
        "## What they do not show",
        "",
        *limits(cfg, summary),
        "",
        "## Reproduce",
        "",
        "```sh",
        command,
        "```",
        "",
        "Every step is an artifact with a manifest under the study's root; the same command resumes an "
        "interrupted study and rewrites this page (byte-identical when nothing changed). The config:",
        "",
        "```yaml",
        yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False).rstrip(),
        "```",
        "",
        "Machine" + ("s" if len(machines) > 1 else "") + ": " + "; ".join(machines) + ".",
        "",
    ]
    return "\n".join(lines)


def _seeds_line(summary: list[dict]) -> str:
    multi = [f"{e['tokenizer']} {', '.join(str(s) for s in e['seeds'])}" for e in summary if len(e["seeds"]) > 1]
    if not multi:
        return "one per tokenizer (" + ", ".join(f"{e['tokenizer']} {e['seeds'][0]}" for e in summary) + ")"
    return "; ".join(multi) + "; one for the others"


def _noise(summary: list[dict]) -> float | None:
    spreads = [e[k] for e in summary for k in ("bpc_validation_spread", "bpc_heldout_spread") if e.get(k) is not None]
    return max(spreads) if spreads else None


def _compare(d: float, noise: float | None) -> str:
    if noise is None:
        return "(no seed spread was measured to judge it)"
    if abs(d) <= noise:
        return f"within the seed spread of {noise:.4f}: not a measured difference"
    return f"{abs(d) / noise:.1f} × the seed spread of {noise:.4f}" if noise > 0 else "(seed spread 0)"


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0] * len(values)
    for r, i in enumerate(order):
        ranks[i] = r
    return ranks


def findings(cfg: VocabStudyConfig, summary: list[dict]) -> list[str]:
    """The paragraph of results, every sentence computed from the table."""
    done = [e for e in summary if e["bpc_validation"] is not None and e["bpc_heldout"] is not None]
    if not done:
        return ["No run has been evaluated yet."]
    noise = _noise(summary)
    out = []
    by_val = sorted(done, key=lambda e: e["bpc_validation"])
    best, worst = by_val[0], by_val[-1]
    by_held = sorted(done, key=lambda e: e["bpc_heldout"])
    out.append(
        f"On the validation text the lowest bits per character is **{best['tokenizer']}** "
        f"({best['vocab_size']:,} ids, {best['bpc_validation']:.4f}); the highest is {worst['tokenizer']} "
        f"({worst['bpc_validation']:.4f}). On the held-out author the lowest is **{by_held[0]['tokenizer']}** "
        f"({by_held[0]['bpc_heldout']:.4f}), the highest {by_held[-1]['tokenizer']} "
        f"({by_held[-1]['bpc_heldout']:.4f})."
    )
    if noise is not None:
        multi = [e["tokenizer"] for e in summary if len(e["seeds"]) > 1]
        out.append(
            f"Noise: the largest difference between seeds of the same setting ({', '.join(multi)}) is "
            f"{noise:.4f} bits per character; differences smaller than that are not measured differences."
        )
    else:
        out.append(
            "Noise was not measured (every setting has one seed), so no difference below can be told "
            "apart from the variation between seeds."
        )
    sp = [e for e in done if e["kind"] == "sentencepiece"]
    if len(sp) >= 2:
        largest = max(sp, key=lambda e: e["vocab_size"])
        best_sp = min(sp, key=lambda e: e["bpc_validation"])
        if best_sp is largest:
            out.append(
                f"Among the sentencepiece vocabularies the largest tried ({largest['vocab_size']:,}) is the "
                "best on validation: at this scale the numbers do not support the guess that a smaller "
                "vocabulary is better."
            )
        else:
            d = largest["bpc_validation"] - best_sp["bpc_validation"]
            dh = largest["bpc_heldout"] - best_sp["bpc_heldout"]
            out.append(
                f"Among the sentencepiece vocabularies, {best_sp['vocab_size']:,} beats the largest tried "
                f"({largest['vocab_size']:,}) by {d:.4f} bits per character on validation "
                f"({_compare(d, noise)}) and by {dh:.4f} on the held-out author ({_compare(dh, noise)})."
            )
    ranks_v = _ranks([e["bpc_validation"] for e in done])
    ranks_h = _ranks([e["bpc_heldout"] for e in done])
    if len(done) >= 3:
        n = len(done)
        rho = 1 - 6 * sum((a - b) ** 2 for a, b in zip(ranks_v, ranks_h)) / (n * (n * n - 1))
        out.append(
            f"The order of the tokenizers on validation and on the held-out author agrees with Spearman's "
            f"ρ = {rho:.2f} ({'the same order' if ranks_v == ranks_h else 'not the same order'})."
        )
    for mecab in (e for e in done if e["kind"] == "mecab+sentencepiece"):
        twin = next((e for e in sp if e["vocab_size"] == mecab["vocab_size"]), None)
        if twin:
            d = mecab["bpc_validation"] - twin["bpc_validation"]
            out.append(
                f"MeCab pre-segmentation at {mecab['vocab_size']:,} ids: {d:+.4f} bits per character on "
                f"validation against plain sentencepiece ({_compare(d, noise)}); it has "
                f"{mecab['chars_per_token']:.3f} characters per token against {twin['chars_per_token']:.3f}, "
                f"so it trains on {mecab['train_tokens'] / twin['train_tokens']:.2f} × the tokens for the "
                "same text."
            )
    for b in (e for e in done if e["kind"] == "bytes"):
        d = b["bpc_validation"] - best["bpc_validation"]
        if b is not best:
            out.append(
                f"Bytes ({b['chars_per_token']:.3f} characters per token) are {d:.4f} bits per character "
                f"behind the best on validation ({_compare(d, noise)}), with "
                f"{b['train_tokens'] / best['train_tokens']:.1f} × its training tokens for the same "
                "characters."
            )
    speed = [e for e in done if e["tokens_per_s"]]
    if len(speed) >= 2:
        fast, slow = max(speed, key=lambda e: e["tokens_per_s"]), min(speed, key=lambda e: e["tokens_per_s"])
        largest = max(speed, key=lambda e: e["vocab_size"])
        why = (
            " (the largest vocabulary is the slowest per token: its output layer is the largest)"
            if slow is largest
            else ""
        )
        out.append(
            f"Training speed: {fast['tokens_per_s']:,.0f} tokens/s for {fast['tokenizer']} down to "
            f"{slow['tokens_per_s']:,.0f} for {slow['tokenizer']}{why}; per character of text, "
            + ", ".join(f"{e['tokenizer']} {e['tokens_per_s'] * e['chars_per_token']:,.0f}" for e in speed)
            + " characters/s."
        )
    return [" ".join(out)]


def limits(cfg: VocabStudyConfig, summary: list[dict]) -> list[str]:
    """What the numbers cannot say, with this study's own figures."""
    from gpt2ja.model.presets import PRESETS

    shape = PRESETS[cfg.preset]["config"]
    non_emb = summary[0]["non_embedding_params"] if summary else 0
    losses = [e["final_train_loss"] for e in summary if e.get("final_train_loss") is not None]
    largest = max((e["vocab_size"] for e in summary), default=0)
    text = (
        f"One model shape ({cfg.preset}: {shape['num_layers']} × {shape['hidden_dim']}, {non_emb:,} "
        f"non-embedding parameters) and one training budget ({cfg.train_characters:,} characters) were "
        "measured; the best vocabulary can move with the model size and with longer training. A larger "
        "vocabulary has more embedding rows to learn from the same text, but it also does more of the "
        "compression in the tokenizer itself (more characters per token): which effect wins depends on how "
        "far training has gone, so short runs cannot settle the question for converged models. "
    )
    if losses:
        text += (
            f"The runs end at training losses of {min(losses):.2f}–{max(losses):.2f} nats per token: they are "
            "short runs, not converged models. "
        )
    if largest < 50_257:
        text += f"The largest vocabulary tried is {largest:,} ids; GPT-2's 50,257 was not run. "
    text += (
        "The corpus is public-domain literature (Aozora Bunko); web "
        "text may rank the tokenizers differently. Seeds were repeated only where the Setup says; where a "
        "difference is smaller than the measured seed spread, the figures do not separate the settings. "
        "tokens/s and train time depend on the machine and on what else ran on it."
    )
    return [text]

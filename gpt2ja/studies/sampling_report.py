"""The sampling study's report: Holtzman-style tables per context length, plots against k and p, conclusions.

The conclusions are computed, not written by hand: every sentence comes from
the aggregated numbers with a rule stated on the page, and says "within the
seed spread" where the difference is not larger than the spread between seeds.

Two rules decide the seed's hypotheses:

* *top-p vs top-k.* At each context length, the top-k and the top-p setting
  whose continuation perplexity is closest to the human continuation's are
  compared (Holtzman et al. compare methods near human perplexity). "More
  natural": closer to the human value on more of Zipf, self-BLEU-4,
  distinct-4, rep-4 and repetition. "Less context-related": a lower context gain
  by more than the seed spread.
* *best k per context length.* Each k is ranked by its distance to the human
  value on every measure (perplexity on a log scale); the best k has the lowest
  mean rank (ties: the smaller k).

Example::

    write_report(run_uri, loaded, cfg, rows, prompts, examples, command="gpt2ja study sampling --run ...")
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from gpt2ja.infra import storage
from gpt2ja.studies.report import fmt, machine, pyplot, save_png, table, write_csv

# key, table/plot label, format ("%" = a share shown in percent)
METRICS = [
    ("perplexity", "Perplexity", ".2f"),
    ("bits_per_char", "bits/char", ".3f"),
    ("self_bleu4", "Self-BLEU-4", ".3f"),
    ("zipf", "Zipf", ".3f"),
    ("repetition", "Repetition %", "%"),
    ("distinct_1", "distinct-1", ".3f"),
    ("distinct_2", "distinct-2", ".3f"),
    ("distinct_3", "distinct-3", ".3f"),
    ("distinct_4", "distinct-4", ".3f"),
    ("rep_4", "rep-4", ".3f"),
    ("overlap", "prompt overlap", ".3f"),
    ("context_gain", "context gain (bits/char)", "+.3f"),
    ("eos", "EOS %", "%"),
]
NATURAL = ["zipf", "self_bleu4", "distinct_4", "rep_4", "repetition"]
CLOSENESS = ["perplexity", "zipf", "self_bleu4", "distinct_4", "rep_4", "repetition", "context_gain", "overlap"]
LABEL = {k: label for k, label, _ in METRICS}
COLORS = ["#4a7ab8", "#d08030", "#4a9a4a", "#b84a4a", "#7a4ab8", "#8a6a3a", "#3a8a8a", "#666666"]


def cell(value, spec: str) -> str:
    if spec == "%":
        return fmt(None if value is None else 100 * value, ".1f")
    return fmt(value, spec)


def distance(entry: dict, human: dict, key: str) -> float | None:
    """How far a method is from the human value on ``key`` (perplexity on a log scale)."""
    a, b = entry.get(key), human.get(key)
    if a is None or b is None:
        return None
    if key == "perplexity":
        return abs(math.log(a) - math.log(b))
    return abs(a - b)


def _at(agg: list[dict], L: int, family: str | None = None, method: str | None = None) -> list[dict]:
    return [
        e
        for e in agg
        if e["context"] == L and (family is None or e["family"] == family) and (method is None or e["method"] == method)
    ]


def _noise(*entries: dict, key: str) -> float | None:
    spreads = [e.get(f"{key}_spread") for e in entries if e.get(f"{key}_spread") is not None]
    return max(spreads) if spreads else None


def _versus(d: float, noise: float | None) -> str:
    if noise is None:
        return "no seed spread measured"
    if abs(d) <= noise:
        return "within the seed spread"
    return f"{abs(d) / noise:.1f} × the seed spread" if noise > 0 else "seed spread 0"


def hypothesis_top_p(agg: list[dict], contexts: Sequence[int]) -> tuple[list[str], dict[int, tuple[str, str]]]:
    """Sentences and, per context length, (naturalness verdict, relevance verdict) of top-p against top-k."""
    lines, verdicts = [], {}
    for L in contexts:
        human = _at(agg, L, "human")
        ks, ps = _at(agg, L, "top-k"), _at(agg, L, "top-p")
        ks = [e for e in ks if e.get("perplexity") and e.get("context_gain") is not None]
        ps = [e for e in ps if e.get("perplexity") and e.get("context_gain") is not None]
        if not human or not ks or not ps:
            continue
        h = human[0]
        k = min(ks, key=lambda e: (distance(e, h, "perplexity"), e["top_k"]))
        p = min(ps, key=lambda e: (distance(e, h, "perplexity"), e["top_p"]))
        p_wins = [
            m
            for m in NATURAL
            if None not in (distance(p, h, m), distance(k, h, m)) and distance(p, h, m) < distance(k, h, m)
        ]
        k_wins = [
            m
            for m in NATURAL
            if None not in (distance(p, h, m), distance(k, h, m)) and distance(k, h, m) < distance(p, h, m)
        ]
        natural = (
            "more natural"
            if len(p_wins) > len(k_wins)
            else ("less natural" if len(p_wins) < len(k_wins) else "as natural")
        )
        gain = p["context_gain"] - k["context_gain"]
        noise = _noise(p, k, key="context_gain")
        if noise is not None and abs(gain) <= noise:
            related = "as context-related (within the seed spread)"
        else:
            related = "less context-related" if gain < 0 else "more context-related"
        overlap = (p["overlap"] or 0) - (k["overlap"] or 0)
        verdicts[L] = (natural, related)
        lines.append(
            f"- **{L} characters.** Closest to the human perplexity ({h['perplexity']:.2f}): {k['method']} "
            f"({k['perplexity']:.2f}) and {p['method']} ({p['perplexity']:.2f}). {p['method']} is closer to the "
            f"human value on {len(p_wins)} of {len(NATURAL)} diversity measures"
            + (f" ({', '.join(LABEL[m] for m in p_wins)})" if p_wins else "")
            + f", {k['method']} on {len(k_wins)}"
            + (f" ({', '.join(LABEL[m] for m in k_wins)})" if k_wins else "")
            + f": top-p is {natural}. Context gain {p['context_gain']:+.3f} against {k['context_gain']:+.3f} "
            f"bits/char ({gain:+.3f}, {_versus(gain, noise)}; human {h['context_gain']:+.3f}); prompt overlap "
            f"{overlap:+.3f}: top-p is {related}."
        )
    return lines, verdicts


def _ranks(scored: list[tuple[float, object]]) -> list[tuple[object, float]]:
    """Rank of each (distance, item) among the others, 0 = closest; ties share their mean rank."""
    return [
        (item, sum(1 for other, _ in scored if other < d) + (sum(1 for other, _ in scored if other == d) - 1) / 2)
        for d, item in scored
    ]


def best_k(agg: list[dict], L: int) -> tuple[int | None, dict[str, str]]:
    """The k closest to human over every measure (lowest mean rank, ties sharing their mean rank) and, per
    measure, the closest k alone (``"tie"`` when several are equally close)."""
    human = _at(agg, L, "human")
    ks = sorted(_at(agg, L, "top-k"), key=lambda e: e["top_k"])
    if not human or len(ks) < 2:
        return None, {}
    h = human[0]
    ranks: dict[int, list[float]] = {e["top_k"]: [] for e in ks}
    per_measure = {}
    for m in CLOSENESS:
        scored = [(round(distance(e, h, m), 12), e["top_k"]) for e in ks if distance(e, h, m) is not None]
        if len(scored) < 2:
            continue
        closest = [k for d, k in scored if d == min(d for d, _ in scored)]
        per_measure[m] = str(closest[0]) if len(closest) == 1 else "tie"
        for k, rank in _ranks(scored):
            ranks[k].append(rank)
    means = {k: statistics.fmean(r) for k, r in ranks.items() if r}
    if not means:
        return None, per_measure
    return min(means, key=lambda k: (means[k], k)), per_measure


def recommend(agg: list[dict], contexts: Sequence[int]) -> list[tuple[dict, float]]:
    """Every decoding method with its mean rank of closeness to the human continuation, best first.

    Ranks are taken among all methods at each context length on each measure of ``CLOSENESS`` and averaged
    over both, so the choice holds across prompt lengths; ties go to the method listed first in the config.
    """
    methods = [e for e in agg if e["family"] != "human" and e["context"] == contexts[0]]
    ranks: dict[str, list[float]] = {e["method"]: [] for e in methods}
    for L in contexts:
        human = _at(agg, L, "human")
        if not human:
            continue
        entries = [e for e in _at(agg, L) if e["family"] != "human" and e["method"] in ranks]
        for m in CLOSENESS:
            scored = [
                (round(distance(e, human[0], m), 12), e["method"])
                for e in entries
                if distance(e, human[0], m) is not None
            ]
            if len(scored) >= 2:
                for name, rank in _ranks(scored):
                    ranks[name].append(rank)
    order = [e["method"] for e in methods]
    means = {name: statistics.fmean(r) for name, r in ranks.items() if r}
    best = sorted(means, key=lambda name: (means[name], order.index(name)))
    return [(next(e for e in methods if e["method"] == name), means[name]) for name in best]


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per (context, method): the mean over seeds of every metric and ``{metric}_spread`` (max − min)."""
    fixed = ("context", "method", "family", "seed", "top_k", "top_p", "temperature")
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in fixed))
    out, seen = [], []
    for r in rows:
        if (r["context"], r["method"]) not in seen:
            seen.append((r["context"], r["method"]))
    for L, name in seen:
        group = [r for r in rows if r["context"] == L and r["method"] == name]
        entry = {k: group[0].get(k) for k in ("context", "method", "family", "top_k", "top_p", "temperature")}
        entry["seeds"] = len(group)
        for k in keys:
            values = [r[k] for r in group if r.get(k) is not None]
            entry[k] = statistics.fmean(values) if values else None
            entry[f"{k}_spread"] = (max(values) - min(values)) if len(values) > 1 else None
        out.append(entry)
    return out


def read_aggregate(uri: str) -> list[dict]:
    """The aggregated rows back from a report's ``sampling.csv`` (numbers as numbers, empty cells as None)."""
    import csv
    import io

    def value(key: str, text: str):
        if text == "" or key in ("method", "family"):
            return text if key in ("method", "family") else None
        return int(text) if key in ("context", "top_k", "seeds") else float(text)

    return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(storage.read_text(uri)))]


def settings_line(entry: dict) -> str:
    """The `gpt2ja generate` options of a method, e.g. ``--top-k 40 --temperature 0.7``."""
    if entry["family"] == "greedy":
        return "--greedy"
    opts = []
    if entry.get("top_k"):
        opts.append(f"--top-k {entry['top_k']}")
    if entry.get("top_p") is not None and entry["top_p"] < 1:
        opts.append(f"--top-p {entry['top_p']:g}")
    if entry.get("temperature") is not None and entry["temperature"] != 1:
        opts.append(f"--temperature {entry['temperature']:g}")
    return " ".join(opts) or "(no truncation: pure sampling)"


def _trend(values: list[int]) -> str:
    if all(v == values[0] for v in values):
        return "stays the same"
    if all(a >= b for a, b in zip(values, values[1:])):
        return "shrinks"
    if all(a <= b for a, b in zip(values, values[1:])):
        return "grows"
    return "goes up and down"


def conclusions(agg: list[dict], cfg, window: int, model_line: str) -> list[str]:
    """The conclusion section's Markdown lines."""
    contexts = cfg.context_lengths
    out = ["### Hypothesis 1: top-p gives more natural but less context-related text than top-k", ""]
    lines, verdicts = hypothesis_top_p(agg, contexts)
    if not verdicts:
        out += ["The grid has no top-k or no top-p setting with a measured perplexity: not tested.", ""]
    else:
        out += lines + [""]
        both = [L for L, (n, r) in verdicts.items() if n == "more natural" and r == "less context-related"]
        nat = [L for L, (n, _) in verdicts.items() if n == "more natural"]
        rel = [L for L, (_, r) in verdicts.items() if r == "less context-related"]
        out += [
            f"Of the context lengths tested ({_list(list(verdicts))} characters), both parts hold at "
            f"{_list(both)}; top-p is more natural at {_list(nat)}; top-p is less context-related by more than "
            f"the seed spread at {_list(rel)}.",
            "",
        ]
    out += ["### Hypothesis 2: top-k should shrink as the context grows", ""]
    rows, bests = [], []
    for L in contexts:
        k, per = best_k(agg, L)
        if k is None:
            continue
        bests.append((L, k))
        rows.append([L, k] + [per.get(m, "-") for m in CLOSENESS])
    if len(bests) < 2:
        out += ["Fewer than two context lengths have two or more top-k settings: not tested.", ""]
    else:
        out += [
            table(["context (chars)", "best k (all measures)"] + [f"by {LABEL[m]}" for m in CLOSENESS], rows),
            "",
            'The best k (closest to the human continuation, mean rank over the measures; "tie": several k '
            "equally close on that measure) "
            f"{_trend([k for _, k in bests])} as the context grows: "
            + ", ".join(f"{k} at {L} characters" for L, k in bests)
            + ".",
            "",
        ]
    ranked = recommend(agg, contexts)
    if ranked:
        best, score = ranked[0]
        out += [
            "### The defaults of `gpt2ja generate`",
            "",
            "Every method ranked by its closeness to the human continuation on "
            + ", ".join(LABEL[m] for m in CLOSENESS)
            + f", at every context length ({_list(list(contexts))} characters); the mean rank (0 = closest of "
            f"the {len(ranked)} methods every time):",
            "",
            table(
                ["method", "mean rank", "options"],
                [[e["method"], f"{r:.2f}", f"`{settings_line(e)}`"] for e, r in ranked],
                align={"method": "l"},
            ),
            "",
            f"The closest overall is **{best['method']}** (`{settings_line(best)}`, mean rank {score:.2f}).",
            "",
        ]
    human = [e for e in agg if e["family"] == "human"]
    over = [(e["context"], e["prompts_over_window"]) for e in human if e.get("prompts_over_window")]
    notes = []
    if over:
        notes.append(
            "At "
            + ", ".join(f"{L} characters {share:.0%}" for L, share in over)
            + f" of the prompts are longer than the model's window of {window} tokens: the model sees only "
            "their end, so those columns measure less context than their label."
        )
    notes.append(
        f"These are the numbers of one model ({model_line}) on {cfg.prompts} prompts with "
        f"{len(cfg.seeds)} seed(s); a larger model, other text or longer continuations may behave "
        "differently. Distances to the human values weigh every measure equally; the spreads between "
        "seeds are in the CSV."
    )
    out += ["### Limits", "", " ".join(notes), ""]
    return out


def _list(values: list[int]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def plot_metric(agg: list[dict], key: str, contexts: Sequence[int]):
    """``key`` against k (left) and p (right), one line per context length; human values dashed."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100, sharey=True)
    scale = 100.0 if dict((k, s) for k, _, s in METRICS)[key] == "%" else 1.0
    humans = {e["context"]: e.get(key) for e in agg if e["family"] == "human"}
    same_human = len({round(v, 12) for v in humans.values() if v is not None}) <= 1
    for ax, family, x_key, x_label in (
        (axes[0], "top-k", "top_k", "k (top-k, log scale)"),
        (axes[1], "top-p", "top_p", "p (top-p)"),
    ):
        for i, L in enumerate(contexts):
            color = COLORS[i % len(COLORS)]
            pts = sorted((e[x_key], e[key]) for e in _at(agg, L, family) if e.get(key) is not None)
            if pts:
                ax.plot([x for x, _ in pts], [y * scale for _, y in pts], marker="o", color=color, label=f"context {L}")
            if not same_human and humans.get(L) is not None:
                ax.axhline(humans[L] * scale, color=color, linestyle="--", linewidth=1)
        if same_human and any(v is not None for v in humans.values()):
            value = next(v for v in humans.values() if v is not None)
            ax.axhline(value * scale, color="black", linestyle="--", linewidth=1, label="human")
        xs = sorted({e[x_key] for e in agg if e["family"] == family})
        if family == "top-k":
            ax.set_xscale("log")
        if xs:
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(LABEL[key])
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{LABEL[key]} against k and p (dashed: human continuation{'' if same_human else ', per context length'})"
    )
    fig.tight_layout()
    return fig


def write_report(
    run_uri: str, loaded, cfg, rows: list[dict], prompts, examples: list[dict], *, command: str
) -> dict[str, str]:
    """``{out}/{name}.md``, ``{name}.csv``, ``{name}-seeds.csv`` and one PNG per metric; returns their URIs."""
    import yaml

    agg = aggregate(rows)
    out = {
        "markdown": storage.join(cfg.out, f"{cfg.name}.md"),
        "csv": storage.join(cfg.out, f"{cfg.name}.csv"),
        "seeds_csv": storage.join(cfg.out, f"{cfg.name}-seeds.csv"),
    }
    keys = [k for k, _, _ in METRICS] + ["rep_1", "rep_2", "rep_3", "chars", "prompt_tokens", "prompts_over_window"]
    head = ["context", "method", "family", "top_k", "top_p", "temperature"]
    write_csv(out["csv"], agg, head + ["seeds"] + [c for k in keys for c in (k, f"{k}_spread")])
    write_csv(out["seeds_csv"], rows, head + ["seed"] + keys)
    pngs = []
    for key, _, _ in METRICS:
        uri = storage.join(cfg.out, f"{cfg.name}-{key.replace('_', '-')}.png")
        save_png(plot_metric(agg, key, cfg.context_lengths), uri)
        pngs.append((key, uri.rsplit("/", 1)[-1]))
        out[f"png_{key}"] = uri
    model = loaded.config
    window = model.context_length
    model_line = (
        f"preset {model.preset}, {loaded.hparams.get('parameters', 0):,} parameters, "
        f"{loaded.tokenizer.kind} tokenizer of {loaded.tokenizer.vocab_size:,} ids, "
        f"step {loaded.step:,}"
    )
    methods = ", ".join(f"{m.name}" for m in cfg.methods)
    lines = [
        "# Sampling: decoding methods against human text, by context length",
        "",
        "The seed project noticed, without measuring, that top-p sampling gives more natural but less "
        "context-related text than top-k, and that k should shrink as the context grows. This page measures "
        "both, in the manner of Holtzman et al. (2020), *The Curious Case of Neural Text Degeneration*, Table 1, "
        "once per context length.",
        "",
        "## Setup",
        "",
        f"- Model: run `{run_uri}` ({model_line}), a window of {window} tokens.",
        f"- Prompts: {cfg.prompts} documents of {', '.join(f'`{t}`' for t in cfg.texts)} long enough, in a fixed "
        "hash order, each cut once at the first sentence end after the longest context; the prompt of context "
        f"length L is the L characters before the cut (L = {', '.join(str(L) for L in cfg.context_lengths)}), "
        f"the human continuation the {cfg.continuation_chars} characters after it.",
        f"- Continuations: {cfg.continuation_chars} characters (or until end of text) per prompt, method and seed "
        f"(seeds {', '.join(str(s) for s in cfg.seeds)}; greedy once). Methods: {methods}.",
        "",
        "## Measures",
        "",
        "All text measures count characters (Japanese has no spaces). Each is computed over the "
        f"{cfg.prompts} continuations of one (context length, method, seed), then averaged over seeds.",
        "",
        "- **Perplexity**: per token of the continuation given `EOS prompt`, under the model; **bits/char**: the "
        "same likelihood per character.",
        "- **Self-BLEU-4**: BLEU-4 on character 1–4-grams of each continuation against the others, averaged "
        "(high: the continuations resemble each other).",
        "- **Zipf**: minus the slope of log frequency against log rank of the characters (top 5,000).",
        "- **Repetition %**: continuations that end in a loop (two or more copies of one block, ≥ 16 "
        "characters in all).",
        "- **distinct-n**: distinct character n-grams ÷ all n-grams; **rep-4**: per continuation, the share of "
        "its 4-grams that repeat an earlier one, averaged.",
        "- **prompt overlap** (relevance): the share of the continuation's distinct kanji and katakana that "
        "occur in its prompt.",
        "- **context gain** (relevance): (log p(continuation | prompt) − log p(continuation)) in bits per "
        "character: how much the prompt raises the model's likelihood of the continuation.",
        "- **EOS %**: continuations that ended with the end-of-text token before the length.",
        "",
        "## Results",
        "",
    ]
    cols = ["method"] + [label for _, label, _ in METRICS]
    for L in cfg.context_lengths:
        body = [
            [e["method"]] + [cell(e.get(k), s) for k, _, s in METRICS]
            for e in sorted(_at(agg, L), key=lambda e: e["family"] != "human")
        ]  # human first, as Holtzman
        lines += [f"### Context {L} characters", "", table(cols, body, align={"method": "l"}), ""]
    lines += [
        f"Seed-to-seed spreads: [`{out['csv'].rsplit('/', 1)[-1]}`]({out['csv'].rsplit('/', 1)[-1]}) "
        f"(`*_spread` = max − min over seeds); every seed: "
        f"[`{out['seeds_csv'].rsplit('/', 1)[-1]}`]({out['seeds_csv'].rsplit('/', 1)[-1]}).",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{LABEL[k]} against k and p]({name})" for k, name in pngs] + [""]
    lines += ["## Conclusions", "", *conclusions(agg, cfg, window, model_line)]
    if examples:
        lines += [
            "## Example",
            "",
            f"The first prompt at {max(cfg.context_lengths)} characters:",
            "",
            "```text",
            examples[0]["prompt"],
            "```",
            "",
        ]
        for e in examples:
            lines += [f"**{e['method']}**", "", "```text", e["text"], "```", ""]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        command,
        "```",
        "",
        "Finished cells are kept under the work folder and reused; the same command rewrites this page "
        "(byte-identical when nothing changed). The config:",
        "",
        "```yaml",
        yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False).rstrip(),
        "```",
        "",
        f"Machine: {machine()}.",
        "",
    ]
    storage.write_text(out["markdown"], "\n".join(lines))
    return out

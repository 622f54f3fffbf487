"""The clean stage's report: ``report.md`` and ``lengths.png`` next to the corpus.

Documents and characters in and out, drops by reason with one example each,
the distribution of document lengths, and the largest duplicate clusters.
"""

from __future__ import annotations

import io

from gpt2ja.infra import storage

TOP_CLUSTERS = 10


def _histogram_png(lengths: list[int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    if lengths:
        data = np.log10(np.maximum(np.array(lengths), 1))
        ax.hist(data, bins=40, color="#4a7ab8")
        ticks = list(range(int(data.min()), int(data.max()) + 2))
        ax.set_xticks(ticks, [f"{10**t:,}" for t in ticks])
    ax.set_xlabel("characters per document (log scale)")
    ax.set_ylabel("documents")
    ax.set_title(f"Document lengths after cleaning ({len(lengths):,} documents)")
    fig.tight_layout()
    buf = io.BytesIO()
    # no timestamp in the PNG: reruns give byte-identical files
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_markdown(counts: dict, results: list[dict], clusters: list[dict], dedup_stats: dict, cfg) -> str:
    examples: dict = {}
    for r in results:  # the first example of each reason, in input order
        for reason, ex in r["examples"].items():
            examples.setdefault(reason, ex)
    lines = [
        "# Clean corpus report",
        "",
        f"Inputs: {', '.join(f'`{u}`' for u in cfg.inputs)} "
        f"({counts['parts_in']} part{'s' if counts['parts_in'] != 1 else ''})",
        "",
        "| | documents | characters |",
        "| --- | ---: | ---: |",
        f"| in | {counts['documents_in']:,} | {counts['characters_in']:,} |",
    ]
    for split, c in counts["splits"].items():
        lines.append(f"| out: {split} | {c['documents']:,} | {c['characters']:,} |")
    lines.append(
        f"| out: total | {counts['documents_out']:,} ({_pct(counts['documents_out'], counts['documents_in'])}) "
        f"| {counts['characters_out']:,} ({_pct(counts['characters_out'], counts['characters_in'])}) |"
    )
    lines += ["", "## Drops by reason", ""]
    if counts["drops"]:
        lines += ["| reason | documents | example |", "| --- | ---: | --- |"]
    else:
        lines.append("No document was dropped.")
    for reason, n in sorted(counts["drops"].items(), key=lambda kv: (-kv[1], kv[0])):
        ex = examples.get(reason)
        if ex is None and reason in ("exact_duplicate", "near_duplicate"):
            ex = next(
                (
                    {
                        "title": m["meta"].get("title", ""),
                        "url": m["meta"].get("url", ""),
                        "snippet": f"duplicate of {c['meta'].get('title', '')} (J≈{m.get('jaccard', 1.0):.2f})",
                    }
                    for c in clusters
                    for m in c["members"]
                    if m["reason"] == reason
                ),
                None,
            )
        desc = ""
        if ex:
            label = ex.get("title") or ex.get("url") or ex.get("detail", "")
            snippet = (ex.get("snippet") or ex.get("detail") or "").replace("\n", " ").replace("|", "\\|")[:80]
            desc = f"{label}: {snippet}" if snippet else label
        lines.append(f"| `{reason}` | {n:,} | {desc} |")
    lines += [
        "",
        "## Document lengths",
        "",
        "![document lengths](lengths.png)",
        "",
        "## Largest duplicate clusters",
        "",
    ]
    if not clusters:
        lines.append("No duplicates found.")
    else:
        lines += ["| kept | duplicates (estimated Jaccard) |", "| --- | --- |"]
        for c in clusters[:TOP_CLUSTERS]:
            members = "; ".join(
                f"{m['meta'].get('title') or m['key'][:8]} ({m['reason'].split('_')[0]}, {m.get('jaccard', 1.0):.2f})"
                for m in c["members"]
            )
            lines.append(f"| {c['meta'].get('title') or c['kept'][:8]} | {members} |")
    lines += ["", f"Dedup: {', '.join(f'{k} {v}' for k, v in dedup_stats.items())}", ""]
    return "\n".join(lines)


def write_report(
    out: str, counts: dict, results: list[dict], clusters: list[dict], dedup_stats: dict, cfg, lengths: list[int]
) -> list[str]:
    md_uri, png_uri = storage.join(out, "report.md"), storage.join(out, "lengths.png")
    storage.write_bytes(png_uri, _histogram_png(lengths))
    storage.write_text(md_uri, render_markdown(counts, results, clusters, dedup_stats, cfg))
    return [md_uri, png_uri]

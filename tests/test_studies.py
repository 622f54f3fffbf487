"""The studies: metrics on hand-made texts, config errors, and both commands end to end on a tiny scale.

The end-to-end tests run the real stages on the bundled mirror's 48 works
(新美南吉 held out): files source → clean → bytes and sentencepiece tokenizers
→ pool → shards → tiny GPT-2 runs of a few steps → evaluation → report; then
the sampling study on one of those runs. They check the outputs exist and
hold what they should, and that a rerun skips the work and rewrites the same
bytes.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from gpt2ja.studies import metrics
from gpt2ja.studies.common import StudyError, load_config, slug
from gpt2ja.studies.sampling import SamplingStudyConfig, cut_point, select_prompts
from gpt2ja.studies.vocab import VocabStudyConfig
from gpt2ja.studies.vocab_data import chunks
from tests import procs
from tests.corpora import mirror_texts

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- metrics on hand-made cases


def test_a_repeated_string_loops_and_is_not_diverse():
    loop = "吾輩は猫である。" * 16
    assert metrics.repetition_rate([loop]) == 1.0
    assert metrics.repeated_tail(loop) == 8
    assert metrics.repeated_tail(loop + "吾輩は") == 8  # cut inside a copy: still a loop
    assert metrics.distinct_n([loop], 1) == 8 / 128  # 8 different characters in 128
    assert metrics.distinct_n([loop], 4) < 0.1
    assert metrics.rep_n([loop], 4) > 0.9


def test_all_different_characters_are_fully_distinct():
    text = "".join(chr(0x4E00 + i) for i in range(200))
    assert metrics.distinct_n([text], 1) == 1.0
    assert metrics.distinct_n([text], 4) == 1.0
    assert metrics.rep_n([text], 1) == 0.0
    assert metrics.repetition_rate([text]) == 0.0
    assert metrics.distinct_n(["", "あ"], 2) is None  # no bigram at all


def test_natural_text_does_not_count_as_a_loop():
    assert metrics.repeated_tail("「はい」「はい」") == 0  # two copies, but only 8 characters
    assert metrics.repeated_tail("ああ、そうか。ね、ね、ね、ね、ね、ね、ね、ね、") == 2  # 16 characters of "ね、"
    assert metrics.repetition_rate(["猫が鳴いた。", "犬が走る" * 5]) == 0.5


def test_zipf_coefficient_of_a_zipfian_sample_is_its_exponent():
    rng = np.random.default_rng(0)
    chars = np.array([chr(0x4E00 + i) for i in range(300)])
    for exponent in (0.8, 1.1, 1.5):
        p = 1.0 / np.arange(1, 301) ** exponent
        sample = "".join(rng.choice(chars, size=200_000, p=p / p.sum()))
        assert metrics.zipf_coefficient([sample]) == pytest.approx(exponent, abs=0.05)
    assert metrics.zipf_coefficient(["ああ"]) is None


def test_self_bleu_of_identical_texts_is_one_and_of_disjoint_texts_near_zero():
    assert metrics.self_bleu(["吾輩は猫である。名前はまだ無い。"] * 4) == pytest.approx(1.0)
    disjoint = ["".join(chr(0x4E00 + 50 * i + j) for j in range(50)) for i in range(4)]
    assert metrics.self_bleu(disjoint) < 0.01
    assert metrics.self_bleu(["一つだけ"]) is None


def test_self_bleu_equals_bleu_of_each_text_against_the_others():
    """The two-best-counts table gives what the plain definition gives, clipping and brevity included."""
    rng = np.random.default_rng(1)
    alphabet = list("あいうえおかきくけこ猫犬")
    texts = ["".join(rng.choice(alphabet, size=int(n))) for n in rng.integers(8, 40, size=7)]
    texts.append(texts[0] * 2)  # an n-gram whose best count belongs to one text only
    plain = np.mean([metrics.bleu(t, texts[:i] + texts[i + 1 :]) for i, t in enumerate(texts)])
    assert metrics.self_bleu(texts) == pytest.approx(plain)
    assert 0.0 < plain < 1.0


def test_relevance_is_higher_for_an_overlapping_continuation():
    prompt = "山の上の小さな寺に、年をとった和尚がひとりで住んでいた。"
    related = "和尚は毎朝、寺の庭を掃いた。"
    unrelated = "電車は駅を出て、海ぞいの線路を走った。"
    assert metrics.prompt_overlap(prompt, related) > metrics.prompt_overlap(prompt, unrelated)
    assert metrics.prompt_overlap(prompt, unrelated) == 0.0
    assert metrics.prompt_overlap(prompt, "そうですね。") is None  # no kanji or katakana to compare
    assert metrics.mean_overlap([prompt, prompt], [related, "そうですね。"]) == metrics.prompt_overlap(prompt, related)


def test_text_metrics_has_every_column():
    got = metrics.text_metrics(["猫が鳴いた。", "犬が走った。"], ["猫", "犬"])
    assert set(got) == {
        *(f"distinct_{n}" for n in range(1, 5)),
        *(f"rep_{n}" for n in range(1, 5)),
        "repetition",
        "zipf",
        "self_bleu4",
        "overlap",
        "chars",
    }
    assert got["overlap"] == 0.5 and got["chars"] == 6.0  # 猫 of 猫, 鳴; 犬 of 犬, 走


# ----------------------------------------------------------------- helpers and config errors


def test_the_method_closest_to_human_at_every_context_is_recommended():
    """Hand-made table: 'near' is closest to the human row on every measure at both lengths, 'far' farthest."""
    from gpt2ja.studies.sampling_report import CLOSENESS, recommend, settings_line

    def row(L, method, family, shift, **kw):
        values = {m: 0.5 + shift for m in CLOSENESS}
        values["perplexity"] = 10.0 * (1 + shift)
        return {
            "context": L,
            "method": method,
            "family": family,
            "top_k": kw.get("top_k", 0),
            "top_p": kw.get("top_p", 1.0),
            "temperature": kw.get("temperature", 1.0),
            **values,
        }

    agg = [
        r
        for L in (8, 128)
        for r in (
            row(L, "human", "human", 0.0),
            row(L, "far", "top-k", 0.4, top_k=5),
            row(L, "near", "top-p", 0.05, top_p=0.95),
            row(L, "mid", "other", 0.2, top_k=40, temperature=0.7),
        )
    ]
    ranked = recommend(agg, [8, 128])
    assert [(e["method"], r) for e, r in ranked] == [("near", 0.0), ("mid", 1.0), ("far", 2.0)]
    assert [settings_line(e) for e, _ in ranked] == ["--top-p 0.95", "--top-k 40 --temperature 0.7", "--top-k 5"]
    assert settings_line({"family": "greedy"}) == "--greedy"
    assert settings_line({"family": "pure", "top_k": 0, "top_p": 1.0, "temperature": 1.0}).endswith("pure sampling)")


def test_chunks_cut_at_line_ends_and_prompts_at_sentence_ends():
    assert chunks("一行目。\n二行目。\n三行目。", 10) == ["一行目。\n二行目。\n", "三行目。"]
    assert chunks("あ" * 25, 10) == ["あ" * 10, "あ" * 10, "あ" * 5]
    assert cut_point("あいう。」えお。かきくけこ", 2, 3) == 8  # not before the closing bracket
    assert cut_point("あいうえおかきくけこ", 4, 3) == 4  # no sentence end: the context length itself
    cfg = SamplingStudyConfig(
        texts=["x"],
        prompts=2,
        context_lengths=[4, 2],
        continuation_chars=8,
        methods=[{"name": "greedy", "greedy": True}],
    )
    assert cfg.context_lengths == [2, 4]
    texts = ["短い。", "あいうえお。かきくけこさしすせそたちつてと。", "なにぬねの。はひふへほまみむめもやゆよ。"]
    prompts = select_prompts(texts, cfg)
    assert sorted(p.doc for p in prompts) == [1, 2]
    for p in prompts:
        assert p.contexts[4].endswith(p.contexts[2]) and len(p.human) == 8
        assert texts[p.doc][: p.cut].endswith(p.contexts[4]) and texts[p.doc][p.cut :].startswith(p.human)
    with pytest.raises(StudyError, match=r"1 documents have the 12 characters a prompt needs .* 2 were asked for"):
        select_prompts(texts[:2], cfg)
    assert slug("top-k 40, t=0.7") == "top-k-40-t0.7"


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


VOCAB_BASE = {
    "root": "r",
    "source": "s",
    "corpus": "c",
    "holdout_author": "新美南吉",
    "tokenizers": [{"name": "bytes", "kind": "bytes"}],
    "train_characters": 3000,
    "batch_tokens": 256,
    "micro_batch": 8,
    "seq_len": 32,
    "preset": "tiny",
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_tokens": 300}, r"batch_tokens 300 is not a multiple of micro_batch × seq_len = 256; use 256"),
        (
            {"tokenizers": [{"name": "sp", "kind": "sentencepiece"}]},
            r"tokenizers\[0\]: tokenizer sp: sentencepiece needs "
            r"vocab_size",
        ),
        (
            {"tokenizers": [{"name": "b", "kind": "bytes"}, {"name": "b", "kind": "bytes"}]},
            r"tokenizers: tokenizer names must be unique; repeated: b$",
        ),
        ({"preset": "huge"}, r"unknown preset 'huge'; use one of tiny, micro, mini"),
        ({"train_options": {"steps": 5}}, r"train_options steps: not a TrainConfig field the study leaves open"),
        ({"train_options": {"mixed_precision": "fp8"}}, r"train_options.mixed_precision: Input should be 'off', "),
        ({"trian_characters": 5}, r"trian_characters: unknown setting"),
        ({"holdout_author": None}, r"holdout_author: must be text, got None"),
    ],
)
def test_vocab_config_errors_are_one_line(tmp_path, change, message):
    path = _write(tmp_path, {**VOCAB_BASE, **change})
    with pytest.raises(StudyError, match=rf"^config {path}: {message}") as err:
        load_config(path, VocabStudyConfig)
    assert "\n" not in str(err.value)


def test_the_shipped_vocab_config_loads_and_sizes_small_vocabularies_by_coverage(tmp_path):
    """2k and 4k pieces cannot give every aozora-bulk character its own piece at 0.9995 coverage (≥ 4,393 ids):
    the shipped config lowers their coverage (the rest of the text goes to byte fallback)."""
    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(repo / "configs" / "studies" / "vocab.yaml", VocabStudyConfig)
    coverage = {t.name: t.character_coverage for t in cfg.tokenizers}
    assert coverage["sp2k"] == 0.98 and coverage["sp4k"] == 0.995 and coverage["sp16k"] is None
    # 50,000 sentences hold at most 12,442 MeCab-bounded pieces: the 16k MeCab tokenizer samples more
    sentences = {t.name: t.sample_sentences for t in cfg.tokenizers}
    assert sentences["mecab-sp16k"] == 150_000 and sentences["sp16k"] is None
    with pytest.raises(StudyError, match=r"character_coverage: must be more than 0\.5, got 0\.1"):
        load_config(
            _write(
                tmp_path,
                {
                    **VOCAB_BASE,
                    "tokenizers": [
                        {"name": "sp", "kind": "sentencepiece", "vocab_size": 2000, "character_coverage": 0.1}
                    ],
                },
            ),
            VocabStudyConfig,
        )


def test_study_commands_print_one_error_line(tmp_path, capsys):
    from gpt2ja.cli import main

    bad = _write(tmp_path, {"texts": ["x"], "methods": [{"name": "a", "top_p": 1.5}]})
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "sampling", "--run", str(tmp_path), "--config", str(bad)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: config {bad}: methods[0].top_p: must be at most 1.0, got 1.5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "vocab", "--config", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        f"error: config {tmp_path / 'missing.yaml'}: file not found; give a YAML file such as configs/studies/"
    )
    good = _write(tmp_path, {"texts": [str(tmp_path)], "methods": [{"name": "greedy", "greedy": True}]})
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "sampling", "--run", str(tmp_path / "no-run"), "--config", str(good)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: run {tmp_path / 'no-run'} has no _MANIFEST.json") and err.count("\n") == 1


def test_importing_the_studies_loads_no_tensorflow():
    code = (
        "import sys, gpt2ja.cli, gpt2ja.studies.cli, gpt2ja.studies.vocab, gpt2ja.studies.sampling, "
        "gpt2ja.studies.metrics, gpt2ja.studies.recipe, "
        "gpt2ja.studies.vocab_report, gpt2ja.studies.sampling_report\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'fugashi', 'scrapy') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    proc = procs.run([sys.executable, "-c", code], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ----------------------------------------------------------------- end to end, tiny


@pytest.fixture(scope="module")
def vocab_study(tmp_path_factory):
    """The vocabulary study on the mirror's 48 works: bytes (2 seeds) and sentencepiece 3,000, tiny runs."""
    pytest.importorskip("tensorflow")
    from gpt2ja.studies.vocab import run_vocab_study

    tmp = tmp_path_factory.mktemp("vocab-study")
    source = mirror_texts(tmp / "texts")
    cfg = VocabStudyConfig(
        root=str(tmp / "root"),
        source=str(source),
        crawl_id="mirror",
        corpus=str(tmp / "root" / "clean" / "mirror"),
        holdout_author="新美南吉",
        validation_fraction=0.2,
        clean_workers=1,
        tokenizers=[
            {"name": "bytes", "kind": "bytes", "seeds": [0, 1]},
            {"name": "sp3k", "kind": "sentencepiece", "vocab_size": 3000},
        ],
        tokenizer_sample_sentences=5000,
        tokenizer_threads=1,
        preset="tiny",
        seq_len=32,
        train_characters=3000,
        batch_tokens=256,
        micro_batch=8,
        learning_rate=3e-3,
        checkpoint_every=10,
        log_every=5,
        pool_margin=2.0,
        pool_chunk_chars=300,
        num_shards=2,
        eval_characters=1500,
        eval_chunk_chars=500,
        eval_batch_size=4,
        out=str(tmp / "docs"),
    )
    lines: list[str] = []
    written = run_vocab_study(cfg, command="gpt2ja study vocab --config tiny.yaml", say=lines.append)
    return cfg, written, lines


@pytest.mark.slow
def test_vocab_study_end_to_end(vocab_study):
    from gpt2ja.corpus.jsonl import read_documents
    from gpt2ja.infra import storage

    cfg, written, lines = vocab_study
    root = Path(cfg.root)
    md = Path(written["markdown"]).read_text(encoding="utf-8")
    assert Path(written["png"]).read_bytes().startswith(PNG)
    rows = Path(written["csv"]).read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("tokenizer,kind,vocab_size,seed,chars_per_token,")
    assert [r.split(",")[:4] for r in rows[1:]] == [
        ["bytes", "bytes", "257", "0"],
        ["bytes", "bytes", "257", "1"],
        ["sp3k", "sentencepiece", "3000", "0"],
    ]
    # the same characters for every tokenizer: steps follow the characters per token
    by = {(r["tokenizer"], int(r["seed"])): r for r in _csv(written["csv"])}
    bytes_row, sp_row = by[("bytes", 0)], by[("sp3k", 0)]
    assert float(bytes_row["chars_per_token"]) < 0.45 < 1.0 < float(sp_row["chars_per_token"])
    assert int(bytes_row["steps"]) > 2 * int(sp_row["steps"])
    for row in (bytes_row, sp_row):
        assert 3000 <= int(row["train_characters"]) < 3000 + 256 * 2  # one step's worth of rounding at most
        assert float(row["epochs"]) <= 1.0
        assert int(row["embedding_params"]) + int(row["non_embedding_params"]) == int(row["params"])
        assert 0 < float(row["bpc_validation"]) < 30 and 0 < float(row["bpc_heldout"]) < 30
        assert float(row["tokens_per_s"]) > 0
    assert bytes_row["non_embedding_params"] == sp_row["non_embedding_params"]  # one model shape
    assert by[("bytes", 0)]["bpc_validation"] != by[("bytes", 1)]["bpc_validation"]  # seeds differ
    # the held-out author is in no training text
    assert not [d for d in read_documents(str(root / "pool" / "train")) if d.author == "新美南吉"]
    assert not [d for d in read_documents(storage.join(cfg.corpus, "train")) if d.author == "新美南吉"]
    assert {d.author for d in read_documents(str(root / "eval-texts" / "heldout" / "validation"))} == {"新美南吉"}
    # the report
    assert "| bytes | bytes | 257 |" in md and "| sp3k | sentencepiece | 3,000 |" in md
    assert " ± " in md and "Noise: the largest difference between seeds of the same setting (bytes)" in md
    assert "## What they do not show" in md and "GPT-2's 50,257 was not run" in md
    assert "```sh\ngpt2ja study vocab --config tiny.yaml\n```" in md and "Machine: " in md
    assert any(line.startswith("plan: bytes-s0") for line in lines)

    # a rerun skips every stage and writes the same bytes; a deleted evaluation is rebuilt identically
    before = {k: Path(v).read_bytes() for k, v in written.items()}
    shutil.rmtree(root / "runs" / "sp3k-s0" / "eval-heldout")
    from gpt2ja.studies.vocab import run_vocab_study

    again: list[str] = []
    run_vocab_study(cfg, command="gpt2ja study vocab --config tiny.yaml", say=again.append)
    assert {k: Path(v).read_bytes() for k, v in written.items()} == before
    assert sum("nothing to do" in line for line in again) == 3  # the three runs were not trained again
    assert (root / "runs" / "sp3k-s0" / "eval-heldout" / "_MANIFEST.json").exists()


def _csv(uri: str) -> list[dict]:
    import csv

    with open(uri, encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sampling_study_end_to_end(vocab_study, tmp_path):
    """Greedy, two top-k and one top-p, 2 context lengths × 3 prompts × 2 seeds on the bytes run.

    The bytes run's window is 32 tokens and a 16-character prompt is ~48 bytes: prompts are cut and
    continuations scored in sliding windows, as for long prompts on a real model.
    """
    from gpt2ja.studies.sampling import run_sampling_study

    vcfg, _, _ = vocab_study
    run = str(Path(vcfg.root) / "runs" / "bytes-s0")
    data = {
        "texts": [str(Path(vcfg.corpus) / "validation")],
        "prompts": 3,
        "context_lengths": [16, 4],
        "continuation_chars": 12,
        "seeds": [0, 1],
        "out": str(tmp_path / "docs"),
        "methods": [
            {"name": "greedy", "greedy": True},
            {"name": "top-k 5", "top_k": 5},
            {"name": "top-k 40", "top_k": 40},
            {"name": "top-p 0.9", "top_p": 0.9},
        ],
    }
    cfg = SamplingStudyConfig.model_validate(data)
    lines: list[str] = []
    written = run_sampling_study(run, cfg, command="gpt2ja study sampling --run RUN", say=lines.append)
    md = Path(written["markdown"]).read_text(encoding="utf-8")
    agg = _csv(written["csv"])
    assert [(r["context"], r["method"]) for r in agg] == [
        (str(L), m) for L in (4, 16) for m in ("human", "greedy", "top-k 5", "top-k 40", "top-p 0.9")
    ]
    assert [r["seeds"] for r in agg[:5]] == ["1", "1", "2", "2", "2"]
    assert len(_csv(written["seeds_csv"])) == 2 * (1 + 1 + 3 * 2)
    for r in agg:
        assert 0 < float(r["perplexity"]) and 0 <= float(r["distinct_1"]) <= 1 and float(r["chars"]) <= 12
    human = [r for r in agg if r["method"] == "human"]
    assert human[0]["distinct_2"] == human[1]["distinct_2"]  # the same continuation at both lengths
    assert float(human[1]["prompts_over_window"]) > 0  # 16 characters ≈ 48 bytes > 31 tokens
    for key in ("perplexity", "self-bleu4", "zipf", "repetition", "distinct-4", "context-gain", "overlap"):
        assert Path(written[f"png_{key.replace('-', '_')}"]).read_bytes().startswith(PNG)
    assert "### Context 4 characters" in md and "### Context 16 characters" in md
    assert "| human |" in md and "| top-p 0.9 |" in md
    assert "### Hypothesis 1: top-p gives more natural but less context-related text than top-k" in md
    assert "Closest to the human perplexity" in md
    assert "| context (chars) | best k (all measures) |" in md and "as the context grows: " in md
    assert "of the prompts are longer than the model's window of 32 tokens" in md
    assert "### The defaults of `gpt2ja generate`" in md
    from gpt2ja.studies.sampling_report import read_aggregate, recommend

    best = recommend(read_aggregate(written["csv"]), [4, 16])[0][0]  # the CSV gives back the report's choice
    assert f"The closest overall is **{best['method']}** (`" in md

    # the CLI reuses the finished cells (no generation) and writes the same numbers elsewhere
    from gpt2ja.cli import main

    path = tmp_path / "sampling.yaml"
    path.write_text(yaml.safe_dump({**data, "out": str(tmp_path / "docs2")}, allow_unicode=True), encoding="utf-8")
    main(["study", "sampling", "--run", run, "--config", str(path)])  # returns: success
    assert (tmp_path / "docs2" / "sampling.csv").read_bytes() == Path(written["csv"]).read_bytes()
    assert (tmp_path / "docs2" / "sampling-zipf.png").read_bytes() == Path(written["png_zipf"]).read_bytes()
    cells = json.loads(next((Path(run) / "sampling-study").glob("c16-top-k-5-s1.json")).read_text())
    assert len(cells["texts"]) == 3 and len(cells["cond"]) == 3


def test_generate_defaults_are_the_sampling_studys_choice():
    """`gpt2ja generate` and the pipeline's generate section sample as the committed study recommends."""
    from gpt2ja.flows.config import GenerateSection
    from gpt2ja.model.generate import DEFAULT_SAMPLING, SAMPLING_STUDY
    from gpt2ja.studies.sampling_report import read_aggregate, recommend

    repo = Path(__file__).resolve().parent.parent
    agg = read_aggregate(str(repo / f"{SAMPLING_STUDY}.csv"))
    best = recommend(agg, sorted({e["context"] for e in agg}))[0][0]
    assert best["family"] != "greedy"
    assert DEFAULT_SAMPLING == {"temperature": best["temperature"], "top_k": best["top_k"], "top_p": best["top_p"]}
    from gpt2ja.model.generate import GenerateConfig  # `gpt2ja generate`'s model: its options default to it

    assert {k: GenerateConfig.model_fields[k].default for k in DEFAULT_SAMPLING} == DEFAULT_SAMPLING
    section = GenerateSection(prompts=["x"])
    assert (section.temperature, section.top_k, section.top_p) == (
        DEFAULT_SAMPLING["temperature"],
        DEFAULT_SAMPLING["top_k"],
        DEFAULT_SAMPLING["top_p"],
    )
    assert f"**{best['method']}**" in (repo / f"{SAMPLING_STUDY}.md").read_text(encoding="utf-8")

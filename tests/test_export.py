"""Export to Hugging Face transformers: a tiny run (random weights, bytes tokenizer) → GPT2LMHeadModel.

The run is written the way training writes one (hparams.json, tokenizer copy,
``checkpoints/ckpt-1``) from an untrained tiny model whose every weight —
biases and LayerNorms included — is randomised, so a wrong mapping of any
tensor shows in the logits. Nothing is downloaded: both models are built from
config.

Padding ids (257–319 of the 320-row embedding) are *not* masked in the raw
logits on either side (both have the padded width and must agree there too);
generation masks them: ours with ``gpt2.mask_padding``, transformers through
``suppress_tokens`` in the exported generation_config.json.

The module's export also has a corpus behind its run (a shards manifest naming
a clean corpus of three public-domain Aozora documents) and an ``eval.json``
with a ``baselines`` entry, so its model card carries a derived licence and
an evaluation table. The Hub push goes to :class:`tests.hub_server.HubServer`
on 127.0.0.1 (no network).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch", reason="torch is needed to load the export with transformers")
pytest.importorskip("transformers", reason="transformers is needed to load the export")
pytest.importorskip("safetensors", reason="safetensors is needed to write the export")

from gpt2ja.model import gpt2, runs  # noqa: E402
from gpt2ja.model.export import ExportError, export_hf, load_hf  # noqa: E402
from gpt2ja.model.presets import ModelError  # noqa: E402
from tests import procs  # noqa: E402
from tests.corpora import write_tiny_run  # noqa: E402

CONTEXT = 32
REPO = Path(__file__).resolve().parent.parent


def write_run(root: Path, tok=None) -> Path:
    """A run directory holding an untrained tiny model with all weights randomised (checkpoint step 1)."""
    return write_tiny_run(root, tok, context=CONTEXT)


AOZORA_PD = "public domain; Aozora Bunko file terms: https://www.aozora.gr.jp/guide/kijyunn.html"
EVAL = {
    "bits_per_character": 6.1331,
    "bits_per_byte": 2.0812,
    "token_perplexity": 279.3,
    "characters": 14283,
    "step": 1,
    "texts_from": ["data/demo/clean/aozora-demo/validation"],
    "baselines": {
        "ppmd_order8_bits_per_character": 4.512,
        "ppmd_order8_bits_per_byte": 1.531,  # flat, as
        "ppmd_order8_primed_bits_per_character": None,  # gpt2ja/model/baselines.py
        "ppmd_order8_primed_bits_per_byte": None,
        "gzip_bits_per_character": 7.25,
        "gzip_bits_per_byte": 2.46,
        "characters": 14283,
        "prime_missing": "no sample",
    },
}


def write_corpus(root: Path, run: Path, licences: list[str]) -> None:
    """A clean corpus (one document per licence note) and a shards manifest naming it, linked from the run."""
    clean, shards = root / "clean", root / "shards"
    for split, docs in (("train", licences[:-1]), ("validation", licences[-1:])):
        (clean / split).mkdir(parents=True)
        with gzip.open(clean / split / "part-00000.jsonl.gz", "wt", encoding="utf-8") as f:
            for i, note in enumerate(docs):
                f.write(
                    json.dumps(
                        {
                            "id": f"{split}{i}",
                            "source": "aozora",
                            "url": f"http://x/{split}{i}",
                            "text": "吾輩は猫である。",
                            "license": note,
                        }
                    )
                    + "\n"
                )
    (clean / "_MANIFEST.json").write_text(json.dumps({"stage": "clean", "fingerprint": "c"}))
    shards.mkdir()
    (shards / "_MANIFEST.json").write_text(
        json.dumps(
            {
                "stage": "shards",
                "fingerprint": "s",
                "refs": "relative",
                "inputs": [{"uri": "../clean", "fingerprint": "c"}],
            }
        )
    )
    hparams = json.loads((run / runs.HPARAMS).read_text())
    hparams.update(
        refs="relative",
        data={"uri": "../shards", "seq_len": CONTEXT},
        train={"preset": "tiny", "batch_tokens": 2048, "learning_rate": 1e-3, "warmup_steps": 10},
    )
    (run / runs.HPARAMS).write_text(json.dumps(hparams))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = write_run(root)
    write_corpus(root, run, [AOZORA_PD] * 3)
    (run / "eval").mkdir()
    (run / "eval" / runs.EVAL_JSON).write_text(json.dumps(EVAL))
    out = root / "hf"
    assert export_hf(str(run), str(out)) == str(out)
    return runs.load_run(str(run)), out


@pytest.mark.slow
def test_export_layout_and_logits_match(exported):
    run, out = exported
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "README.md",
        "gpt2ja_tokenizer/tokenizer.json",
        "gpt2ja_tokenizer/_MANIFEST.json",
    } <= names
    conf = json.loads((out / "config.json").read_text())
    assert (conf["vocab_size"], conf["n_embd"], conf["n_layer"], conf["n_head"], conf["n_positions"]) == (
        320,
        128,
        2,
        2,
        CONTEXT,
    )
    assert conf["activation_function"] == "gelu_new" and conf["layer_norm_epsilon"] == 1e-5
    assert conf["bos_token_id"] == conf["eos_token_id"] == 256 and conf["tie_word_embeddings"] is True
    assert json.loads((out / "generation_config.json").read_text())["suppress_tokens"] == list(range(257, 320))
    assert "AutoTokenizer.from_pretrained" in (out / "README.md").read_text()
    assert {"tokenizer.json", "tokenizer_config.json"} <= names

    hf = load_hf(str(out))
    ids = np.random.default_rng(0).integers(0, 320, size=(3, CONTEXT))  # padding ids as inputs too
    ours = gpt2.logits(run.model, ids.astype(np.int32)).numpy()
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids)).logits.numpy()
    assert ours.shape == theirs.shape == (3, CONTEXT, 320)  # padded width, unmasked, on both sides
    assert np.abs(ours).max() > 1.0  # a random model with spread-out logits, not a trivial match
    assert np.max(np.abs(ours - theirs)) < 1e-4


def test_export_manifest_verifies_and_a_second_export_is_skipped(exported):
    from gpt2ja.infra import stage, storage

    run, out = exported
    manifest, problems = stage.verify(str(out), deep=True)
    assert problems == [] and manifest["stage"] == "export" and manifest["refs"] == "relative"
    assert manifest["inputs"][0]["uri"] == "../run"  # relative to the export: the two move together
    assert storage.MANIFEST not in {f["path"] for f in manifest["files"]}
    written = (out / "model.safetensors").stat().st_mtime_ns
    assert export_hf(run.uri, str(out)) == str(out)
    assert (out / "model.safetensors").stat().st_mtime_ns == written  # up to date: not redone
    assert storage.read_manifest(str(out))["created_at"] == manifest["created_at"]


@pytest.mark.slow
def test_the_export_check_scores_as_gpt2ja_eval(exported, tmp_path):
    """benchmarks/hf_export_check.py (what runs on a GPU machine): transformers alone, gpt2ja's windows,
    the same bits/char as our evaluation of the run; generate timed with the export's own settings."""
    import importlib.util

    from gpt2ja.model.evaluate import bits_per_character

    run, out = exported
    text = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。" * 3  # > 1 window of 32 ids
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    expected = bits_per_character(run.model, run.tokenizer, [text])
    assert expected["tokens"] > CONTEXT
    spec = importlib.util.spec_from_file_location("hf_export_check", REPO / "benchmarks" / "hf_export_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    report = tmp_path / "report.md"
    argv = [
        "--export",
        str(out),
        "--text",
        str(tmp_path / "text.txt"),
        "--device",
        "cpu",
        "--reps",
        "1",
        "--expect-bpc",
        f"{expected['bits_per_character']:.6f}",
        "--report",
        str(report),
    ]
    assert check.main(argv) == 0
    written = report.read_text(encoding="utf-8")
    assert "agrees" in written and f"| gpt2ja eval (TensorFlow) | {expected['bits_per_character']:.4f} |" in written
    assert written.count("| the export's generation_config |") == 2 and written.count("| greedy |") == 2
    wrong = argv[:-4] + ["--expect-bpc", f"{expected['bits_per_character'] + 0.01:.6f}", "--report", str(report)]
    assert check.main(wrong) == 1 and "DISAGREES" in report.read_text(encoding="utf-8")


def test_new_sampling_defaults_redo_the_export(exported, tmp_path, monkeypatch):
    """generation_config.json carries gpt2ja generate's defaults: when they change, the export is not skipped."""
    from gpt2ja.infra import storage
    from gpt2ja.model import generate

    run, _ = exported
    out = tmp_path / "hf"
    export_hf(run.uri, str(out))
    first = storage.read_manifest(str(out))["fingerprint"]
    monkeypatch.setitem(generate.DEFAULT_SAMPLING, "top_k", 7)
    export_hf(run.uri, str(out))
    assert storage.read_manifest(str(out))["fingerprint"] != first
    assert json.loads((out / "generation_config.json").read_text())["top_k"] == 7
    assert "top-k 7," in (out / "README.md").read_text(encoding="utf-8")


def test_greedy_generation_gives_the_same_ids(exported):
    run, out = exported
    hf = load_hf(str(out))
    prompt = np.array([run.tokenizer.encode("吾輩は猫")], dtype=np.int64)
    new = 6
    ids = prompt.astype(np.int32)
    for _ in range(new):
        scores = gpt2.mask_padding(gpt2.logits(run.model, ids)[:, -1], run.config.vocab_size)
        ids = np.concatenate([ids, np.argmax(scores.numpy(), axis=-1)[:, None].astype(np.int32)], axis=1)
    with torch.no_grad():
        theirs = hf.generate(
            torch.as_tensor(prompt),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            attention_mask=torch.ones_like(torch.as_tensor(prompt)),
        ).numpy()
    assert theirs.tolist() == ids.tolist()
    assert all(0 <= i < run.config.vocab_size for i in ids[0, prompt.shape[1] :])


def test_auto_tokenizer_gives_our_ids_and_text(exported):
    from transformers import AutoTokenizer

    run, out = exported
    hf = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    for text in ["吾輩は猫である。\n名前は  まだ無い", "🍣 𠮷 ｶﾀｶﾅ 123", ""]:
        ids = run.tokenizer.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == text
    assert hf.eos_token_id == run.tokenizer.eos_id == 256


def test_bad_run_uri_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"no readable hparams\.json; is this a run directory") as err:
        export_hf(str(tmp_path / "no-such-run"), str(tmp_path / "out"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_mismatch_is_refused_and_nothing_published(tmp_path, monkeypatch):
    run = write_run(tmp_path)
    monkeypatch.setattr("gpt2ja.model.export.ACTIVATION", "gelu")  # a wrong config: logits differ slightly
    with pytest.raises(ExportError, match=r"transformers logits differ from the run's by .* nothing was published"):
        export_hf(str(run), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def spm_tokenizer(tmp_path: Path, model_type: str = "bpe", vocab_size: int = 320):
    """A 320-id sentencepiece tokenizer (our trainer options) trained in ~0.1 s on a few repeated lines."""
    from gpt2ja.tokenization.spm import SentencePieceTokenizer, train_model

    sample = tmp_path / "sample.txt"
    sample.write_text(
        "吾輩は猫である。名前は まだ無い。\nどこで生れたかとんと見当がつかぬ。\n"
        "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。\n" * 50,
        encoding="utf-8",
    )
    proto = train_model(
        str(sample),
        where="test",
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        num_threads=1,
        max_sentence_length=4096,
    )
    return SentencePieceTokenizer(proto)


def test_sentencepiece_run_ships_spm_model_and_our_artifact(tmp_path):
    import sentencepiece

    from gpt2ja.tokenization.tokenizer import Tokenizer

    tok = spm_tokenizer(tmp_path)
    run = write_run(tmp_path, tok)
    out = tmp_path / "hf"
    export_hf(str(run), str(out))  # verifies the logits itself
    conf = json.loads((out / "config.json").read_text())
    assert conf["vocab_size"] == 320 and conf["eos_token_id"] == tok.eos_id == 1
    assert json.loads((out / "generation_config.json").read_text())["suppress_tokens"] == []  # 320: no padding
    text = "吾輩は猫である。\n名前は まだ無い"
    assert sentencepiece.SentencePieceProcessor(model_file=str(out / "spm.model")).encode(text) == tok.encode(text)
    copy = Tokenizer.load(str(out / "gpt2ja_tokenizer"))
    assert copy.kind == "sentencepiece" and copy.encode(text + "▁") == tok.encode(text + "▁")
    readme = (out / "README.md").read_text()
    assert "spm.model" in readme and "literal" in readme
    # sentencepiece BPE merges by score: no verified fast equivalent, said instead of shipped
    assert not (out / "tokenizer.json").exists()
    assert "No `AutoTokenizer` is shipped: sentencepiece tokenizer: model type 'bpe'" in readme


@pytest.mark.slow
def test_unigram_sentencepiece_loads_with_auto_tokenizer(tmp_path):
    """Unigram (the default kind): tokenizer.json gives our ids on text the vocabulary covers and does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = spm_tokenizer(tmp_path, "unigram", vocab_size=304)  # the most this text allows
    out = tmp_path / "hf"
    export_hf(str(write_run(tmp_path, tok)), str(out))
    hf = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    for text in ["吾輩は猫である。\n名前は まだ無い", "見当 123  がつかぬ\n\n", "猫🍣鬱 abc\t", " "]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text), text
        assert hf.decode(tok.encode(text)) == text
    assert hf.eos_token_id == tok.eos_id and hf.pad_token_id == tok.eos_id
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    assert type(model).__name__ == "GPT2LMHeadModel"


# ----------------------------------------------------------------- tokenizer: document start, padding, context


def hf_tokenizer_of(out: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(out), local_files_only=True)


def test_tokenizer_starts_every_text_with_the_document_start_and_pads_on_the_left(exported):
    run, out = exported
    hf, eos = hf_tokenizer_of(out), run.tokenizer.eos_id
    ours = run.tokenizer.encode("吾輩は猫")
    assert hf("吾輩は猫")["input_ids"] == [eos] + ours  # training's document start
    assert hf("吾輩は猫", add_special_tokens=False)["input_ids"] == ours
    assert json.loads((out / "tokenizer.json").read_text())["post_processor"]["type"] == "TemplateProcessing"
    batch = hf(["吾輩は猫", "猫"], padding=True)
    short = [eos] + run.tokenizer.encode("猫")
    pads = len(batch["input_ids"][0]) - len(short)
    assert batch["input_ids"][1] == [eos] * pads + short  # pads are eos too ...
    assert batch["attention_mask"][1] == [0] * pads + [1] * len(short)  # ... told apart by the mask only
    conf = json.loads((out / "tokenizer_config.json").read_text())
    assert conf["tokenizer_class"] == "PreTrainedTokenizerFast" and conf["model_max_length"] == CONTEXT
    assert (conf["padding_side"], conf["truncation_side"]) == ("left", "left")
    assert "pad_token_id" not in json.loads((out / "config.json").read_text())  # see hf_config


@pytest.mark.slow
def test_generate_on_the_tokenizer_output_is_our_greedy_generate(exported):
    """`model.generate(**tokenizer(prompt))` = `gpt2ja generate --greedy`, one prompt and a left-padded batch."""
    from gpt2ja.model.generate import generate

    run, out = exported
    hf, model = hf_tokenizer_of(out), load_hf(str(out))
    prompts, new = ["吾輩は猫", "名前"], 8
    ours = [s.ids for s in generate(run.model, run.tokenizer, prompts, greedy=True, max_new_tokens=new)]
    eos = run.tokenizer.eos_id

    def continuation(row: list[int], prompt_len: int) -> list[int]:
        got = row[prompt_len:]
        return got[: got.index(eos)] if eos in got else got  # ours stops before eos

    for prompt, want in zip(prompts, ours):
        inputs = hf(prompt, return_tensors="pt")
        with torch.no_grad():
            got = model.generate(**inputs, do_sample=False, max_new_tokens=new)[0].tolist()
        assert continuation(got, inputs["input_ids"].shape[1]) == want
    inputs = hf(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        got = model.generate(**inputs, do_sample=False, max_new_tokens=new).tolist()
    assert [continuation(row, inputs["input_ids"].shape[1]) for row in got] == ours
    assert any(ours) and all(0 <= i < run.config.vocab_size for ids in ours for i in ids)


def test_a_prompt_longer_than_the_context_is_cut_from_the_left(exported):
    from transformers import pipeline

    run, out = exported
    hf, model = hf_tokenizer_of(out), load_hf(str(out))
    text = "ある日の暮方の事である。" * 4  # 144 bytes: 4.5 contexts
    new = 8
    ids = hf(text, truncation=True, max_length=CONTEXT - new, return_tensors="pt")
    assert ids["input_ids"][0].tolist() == [256] + run.tokenizer.encode(text)[-(CONTEXT - new - 1) :]
    with torch.no_grad():
        got = model.generate(**ids, do_sample=False, max_new_tokens=new, min_new_tokens=new)
    assert got.shape == (1, CONTEXT)
    pipe = pipeline("text-generation", model=model, tokenizer=hf)
    result = pipe(text, handle_long_generation="hole", max_new_tokens=new, do_sample=False)
    assert result[0]["generated_text"].startswith(text)


# ----------------------------------------------------------------- generation_config.json


@pytest.mark.slow
def test_generation_config_samples_with_our_defaults_and_pipeline_does_not_warn(exported):
    import transformers
    from transformers import GenerationConfig, pipeline

    from gpt2ja.model.generate import DEFAULT_SAMPLING

    run, out = exported
    raw = json.loads((out / "generation_config.json").read_text())
    assert "max_length" not in raw and raw["max_new_tokens"] == CONTEXT // 2
    conf = GenerationConfig.from_pretrained(str(out))
    assert conf.do_sample is True
    assert (conf.temperature, conf.top_k, conf.top_p) == (
        DEFAULT_SAMPLING["temperature"],
        DEFAULT_SAMPLING["top_k"],
        DEFAULT_SAMPLING["top_p"],
    )

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = pipeline("text-generation", model=str(out))
            transformers.set_seed(0)
            text = pipe("吾輩は猫")[0]["generated_text"]
            rows = pipe("吾輩は猫", num_return_sequences=4, return_tensors=True)
    finally:
        logger.removeHandler(handler)
    assert [str(w.message) for w in caught] == [] and [r.getMessage() for r in records] == []
    assert text.startswith("吾輩は猫")
    prompt = [run.tokenizer.eos_id] + run.tokenizer.encode("吾輩は猫")
    ids = [r["generated_token_ids"] for r in rows]
    assert all(row[: len(prompt)] == prompt for row in ids)  # the pipeline added the document start
    assert len({tuple(row) for row in ids}) > 1  # sampled, not greedy


# ----------------------------------------------------------------- the model card


def test_model_card_metadata_parses_and_carries_the_corpus_licence_and_eval(exported):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard import metadata_load

    run, out = exported
    card = ModelCard.load(out / "README.md")  # parses the YAML header, no network
    meta = metadata_load(out / "README.md")
    assert ModelCardData(**meta).to_dict() == card.data.to_dict()  # the header round-trips as card data
    data = card.data
    assert data.language == ["ja"] and data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation" and {"gpt2", "japanese"} <= set(data.tags)
    assert (data.license, data.license_name) == ("other", "public-domain")
    assert data.license_link == "https://www.aozora.gr.jp/guide/kijyunn.html"
    assert data.datasets == ["aozora-bunko"] and "bits_per_character" in data.metrics
    text = card.text
    assert "| this model (step 1) | 6.1331 | 2.0812 | 279.30 |" in text
    assert "| baseline: PPMd order 8 | 4.5120 | 1.5310 | – |" in text
    assert "| baseline: PPMd order 8 primed with training text | – | – | – |" in text
    assert "| baseline: gzip -9 | 7.2500 | 2.4600 | – |" in text and "baseline: characters" not in text
    assert (
        "top-k 640, top-p off (1.0)" in text
        and "Preset `tiny`, 1 optimizer steps of 2,048 tokens: 2,048 tokens" in text
    )
    assert "| public-domain | 3 |" in text and "## Limits" in text


def test_nested_baselines_render_too():
    from gpt2ja.model.model_card import baseline_rows

    assert baseline_rows({"ppmd": {"bits_per_character": 4.5, "bits_per_byte": 1.5}}) == [("ppmd", 4.5, 1.5)]


@pytest.mark.parametrize(
    "licences, expected",
    [
        ({"public-domain": 40}, ("other", "public-domain")),
        ({"cc-by-4.0": 2}, ("cc-by-4.0", None)),
        ({"public-domain": 3, "cc-by-4.0": 1}, ("other", "mixed")),
        ({"public-domain": 3, "": 1}, ("unknown", None)),
        ({}, ("unknown", None)),
    ],
)
def test_hub_licence_from_the_documents(licences, expected):
    from gpt2ja.model.model_card import hub_license, license_class

    assert hub_license(licences)[:2] == expected
    assert license_class(AOZORA_PD) == "public-domain"
    assert license_class("https://creativecommons.org/licenses/by-nc-sa/4.0/") == "cc-by-nc-sa-4.0"
    assert (
        license_class("http://creativecommons.org/licenses/by/2.1/jp/")
        == "http://creativecommons.org/licenses/by/2.1/jp/"
    )


# ----------------------------------------------------------------- push to the Hub (a local stand-in)


def test_push_to_hub_uploads_the_export_through_huggingface_hub(exported, monkeypatch):
    from typer.testing import CliRunner

    from gpt2ja.cli import app
    from tests.hub_server import HubServer

    run, out = exported
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")
        result = CliRunner().invoke(
            app, ["export", "hf", "--run", run.uri, "--out", str(out), "--push-to-hub", "someone/gpt2ja-tiny"]
        )
    assert result.exit_code == 0, result.output
    assert f"pushed {out} → {hub.url}/someone/gpt2ja-tiny/commit/" in result.output
    assert hub.requests[0][:2] == ("POST", "/api/repos/create")
    assert hub.requests[0][2]["name"] == "gpt2ja-tiny" and hub.requests[0][2]["organization"] == "someone"
    assert all(h.get("authorization") == "Bearer hf_local_test_token" for h in hub.headers)
    local = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert set(hub.files) == local - {"_MANIFEST.json"}  # provenance with local paths stays home
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "generation_config.json"):
        assert hub.files[name] == (out / name).read_bytes()
    assert hub.commits[0]["summary"] == "gpt2ja export, step 1"
    assert hub.validated == [(out / "README.md").read_text()]  # the card's metadata passed the stand-in's checks


def test_push_to_an_unreachable_hub_is_one_line(exported, monkeypatch):
    from gpt2ja.model.export import push_to_hub

    run, out = exported
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(ExportError, match=r"push of .* to a/b at http://127\.0\.0\.1:9: .*check HF_TOKEN") as err:
        push_to_hub(str(out), "a/b", endpoint="http://127.0.0.1:9")
    assert "\n" not in str(err.value)
    with pytest.raises(ExportError, match="not a finished export"):
        push_to_hub(str(run.uri), "a/b", endpoint="http://127.0.0.1:9")


# ----------------------------------------------------------------- transformers 4.x


TRANSFORMERS_4 = "transformers==4.57.*"  # the newest 4.x; the oldest we claim is this one (the only one tested)


@pytest.mark.slow
def test_transformers_4_loads_the_export(exported, tmp_path):
    """A throwaway venv with transformers 4.57 (+ the on-disk torch CPU wheel) loads tokenizer and model (~30 s).

    Skipped when the package index cannot give transformers 4.x to pip (no network, no cache).
    """
    run, out = exported
    venv = tmp_path / "venv4"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = procs.run([str(py), "-m", "pip", "install", "-q", TRANSFORMERS_4, "torch==2.13.0", "safetensors"])
    if install.returncode != 0:
        pytest.skip(f"pip could not install {TRANSFORMERS_4}: {install.stderr.strip().splitlines()[-1:]}")
    script = f"""
import json, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
assert transformers.__version__.startswith("4."), transformers.__version__
tok = AutoTokenizer.from_pretrained({str(out)!r}, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained({str(out)!r}, local_files_only=True)
inputs = tok(["吾輩は猫", "名前"], return_tensors="pt", padding=True)
with torch.no_grad():
    logits = model(torch.tensor([[256, 1, 2, 3]])).logits
    greedy = model.generate(**inputs, do_sample=False, max_new_tokens=8).tolist()
print(json.dumps({{"class": type(tok).__name__, "model": type(model).__name__, "ids": inputs["input_ids"].tolist(),
                  "mask": inputs["attention_mask"].tolist(), "max_len": tok.model_max_length,
                  "logits": logits[0, -1, :5].tolist(), "greedy": greedy}}))
"""
    got = procs.run([str(py), "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert got.returncode == 0, got.stderr[-2000:]
    result = json.loads(got.stdout.strip().splitlines()[-1])
    assert (result["class"], result["model"], result["max_len"]) == (
        "PreTrainedTokenizerFast",
        "GPT2LMHeadModel",
        CONTEXT,
    )
    hf, model = hf_tokenizer_of(out), load_hf(str(out))
    inputs = hf(["吾輩は猫", "名前"], return_tensors="pt", padding=True)
    assert (result["ids"], result["mask"]) == (inputs["input_ids"].tolist(), inputs["attention_mask"].tolist())
    with torch.no_grad():
        ours = model(torch.tensor([[256, 1, 2, 3]])).logits[0, -1, :5].numpy()
        greedy = model.generate(**inputs, do_sample=False, max_new_tokens=8).tolist()
    assert np.allclose(result["logits"], ours, atol=1e-5) and result["greedy"] == greedy

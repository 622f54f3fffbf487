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
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch", reason="torch is needed to load the export with transformers")
pytest.importorskip("transformers", reason="transformers is needed to load the export")
pytest.importorskip("safetensors", reason="safetensors is needed to write the export")

from model import gpt2, runs  # noqa: E402
from model.export import ExportError, export_hf, load_hf  # noqa: E402
from model.presets import ModelConfig, ModelError  # noqa: E402
from tokenization.bytes_tokenizer import ByteTokenizer  # noqa: E402

CONTEXT = 32


def write_run(root: Path, tok=None) -> Path:
    """A run directory holding an untrained tiny model with all weights randomised (checkpoint step 1)."""
    import keras

    keras.utils.set_random_seed(3)
    tok = tok or ByteTokenizer()
    cfg = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, context_length=CONTEXT, dropout=0.0)
    lm = gpt2.build_model(cfg)
    rng = np.random.default_rng(5)
    for v in lm.backbone.weights:
        base = 1.0 if v.path.endswith("gamma") else 0.0
        v.assign(base + rng.normal(0.0, 0.15, size=tuple(v.shape)).astype(np.float32))
    run = root / "run"
    (run / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (run / runs.HPARAMS).write_text(json.dumps({"model": cfg.model_dump(), "padded_vocab_size":
                                                cfg.padded_vocab_size}))
    tok.save(str(run / runs.TOKENIZER_DIR))
    tf.train.Checkpoint(backbone=lm.backbone).save(str(run / runs.CHECKPOINT_DIR / runs.CHECKPOINT_NAME))
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = write_run(root)
    out = root / "hf"
    assert export_hf(str(run), str(out)) == str(out)
    return runs.load_run(str(run)), out


def test_export_layout_and_logits_match(exported):
    run, out = exported
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md",
            "gpt2ja_tokenizer/tokenizer.json", "gpt2ja_tokenizer/_MANIFEST.json"} <= names
    conf = json.loads((out / "config.json").read_text())
    assert (conf["vocab_size"], conf["n_embd"], conf["n_layer"], conf["n_head"], conf["n_positions"]) == \
        (320, 128, 2, 2, CONTEXT)
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
    from infra import stage, storage

    run, out = exported
    manifest, problems = stage.verify(str(out), deep=True)
    assert problems == [] and manifest["stage"] == "export" and manifest["refs"] == "relative"
    assert manifest["inputs"][0]["uri"] == "../run"  # relative to the export: the two move together
    assert storage.MANIFEST not in {f["path"] for f in manifest["files"]}
    written = (out / "model.safetensors").stat().st_mtime_ns
    assert export_hf(run.uri, str(out)) == str(out)
    assert (out / "model.safetensors").stat().st_mtime_ns == written  # up to date: not redone
    assert storage.read_manifest(str(out))["created_at"] == manifest["created_at"]


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
        theirs = hf.generate(torch.as_tensor(prompt), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             attention_mask=torch.ones_like(torch.as_tensor(prompt))).numpy()
    assert theirs.tolist() == ids.tolist()
    assert all(0 <= i < run.config.vocab_size for i in ids[0, prompt.shape[1]:])


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
    monkeypatch.setattr("model.export.ACTIVATION", "gelu")  # a wrong config: logits differ slightly
    with pytest.raises(ExportError, match=r"transformers logits differ from the run's by .* nothing was published"):
        export_hf(str(run), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def spm_tokenizer(tmp_path: Path, model_type: str = "bpe", vocab_size: int = 320):
    """A 320-id sentencepiece tokenizer (our trainer options) trained in ~0.1 s on a few repeated lines."""
    from tokenization.spm import SentencePieceTokenizer, train_model

    sample = tmp_path / "sample.txt"
    sample.write_text("吾輩は猫である。名前は まだ無い。\nどこで生れたかとんと見当がつかぬ。\n"
                      "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。\n" * 50,
                      encoding="utf-8")
    proto = train_model(str(sample), where="test", vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
                        num_threads=1, max_sentence_length=4096)
    return SentencePieceTokenizer(proto)


def test_sentencepiece_run_ships_spm_model_and_our_artifact(tmp_path):
    import sentencepiece

    from tokenization.tokenizer import Tokenizer

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

"""Tokenizers: the three kinds trained on a small real corpus (the bundled Aozora mirror).

The corpus is built once per session from examples/aozora-mirror (48 works,
~120k characters, NFKC-normalised); every tokenizer is trained
once (about a second each) and shared by the tests.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import read_documents
from gpt2ja.infra import stage, storage
from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer
from gpt2ja.tokenization.mecab import Segmenter
from gpt2ja.tokenization.spm import BYTE_IDS, N_META_PIECES
from gpt2ja.tokenization.tokenizer import EOS, TOKENIZER_JSON, Tokenizer, TokenizerError
from gpt2ja.tokenization.train import Reservoir, train_tokenizer, training_sentences
from tests import procs
from tests.assertions import one_line_error
from tests.corpora import REPO, mirror_split, write_clean_corpus

VOCAB = 3000  # the mirror has ~2,100 characters at 99.95% coverage; byte fallback adds 259 fixed pieces

# name → (kind, vocab_size, model_type)
SPECS = {
    "bytes": ("bytes", 257, "unigram"),
    "sentencepiece-unigram": ("sentencepiece", VOCAB, "unigram"),
    "sentencepiece-bpe": ("sentencepiece", VOCAB, "bpe"),
    "mecab-unigram": ("mecab+sentencepiece", VOCAB, "unigram"),
}
SP_NAMES = [n for n in SPECS if n != "bytes"]

HARD_STRINGS = [
    "𠮷野家の髙橋さん",  # U+20BB7 (outside the BMP) and a cp932 extension kanji
    "🍣👍🏽",
    "👨‍👩‍👧‍👦",  # emoji, skin-tone modifier, ZWJ sequence
    "a\tb",
    "  double  spaces ",
    " leading",
    "trailing ",
    " ",
    "",
    "\n",
    "\n\n",
    "\n\n\n末尾\n",
    "\r\n\r",
    "<|endoftext|>",
    "前<|endoftext|>後",
    "©®™",
    "한국어 텍스트",
    "Café naïve façade Ångström",
    "e\u0301",
    "▁",
    "a▁b ▁ ▁▁",  # sentencepiece's own space symbol typed in text
    "\x00\x01\x1f\x7f",
    "\u200b\u200d\ufeff",
    "\u2028\u2029",
    "\ue000私用",
    "\U0010ffff",
    "\u3000全角スペース",
    "ｶﾀｶﾅ１２３",
    "1234567890 3.14159",
    "吾輩は猫である。\n名前はまだ無い。\n",
]


@pytest.fixture(scope="session")
def clean_corpus(tmp_path_factory) -> str:
    train, validation = mirror_split()
    assert len(validation) >= 3 and len(train) >= 30
    return write_clean_corpus(tmp_path_factory.mktemp("clean") / "mirror", train, validation)


@pytest.fixture(scope="session")
def trained(clean_corpus, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for name, (kind, vocab, model_type) in SPECS.items():
        out[name] = train_tokenizer(clean_corpus, kind, vocab, str(root / name), model_type=model_type)
    return out


@pytest.fixture(scope="session")
def loaded(trained) -> dict[str, Tokenizer]:
    return {name: Tokenizer.load(uri) for name, uri in trained.items()}


def validation_texts(corpus: str) -> list[str]:
    return [d.text for d in read_documents(storage.join(corpus, "validation"))]


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(SPECS))
def test_round_trip_every_validation_document(loaded, clean_corpus, name):
    tok = loaded[name]
    texts = validation_texts(clean_corpus)
    batch = tok.encode_batch(texts, num_threads=2)
    for text, ids in zip(texts, batch):
        assert ids == tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


@pytest.mark.parametrize("name", list(SPECS))
def test_round_trip_hard_strings(loaded, name):
    tok = loaded[name]
    for text in HARD_STRINGS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, (text, ids)
    assert tok.encode_batch(HARD_STRINGS) == [tok.encode(t) for t in HARD_STRINGS]
    joined = "".join(HARD_STRINGS)
    assert tok.decode(tok.encode(joined)) == joined


@pytest.mark.parametrize("name", SP_NAMES)
def test_sentencepiece_layout_newline_and_no_unk(loaded, name):
    tok = loaded[name]
    assert tok.vocab_size == VOCAB
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", EOS, "\n"]
    assert tok.id_to_piece(BYTE_IDS.start) == "<0x00>" and tok.id_to_piece(BYTE_IDS.stop - 1) == "<0xFF>"
    # A newline is always its own token (id 2), however many there are.
    assert tok.encode("\n\n") == [2, 2]
    assert tok.encode("一\n二").count(2) == 1
    # Byte fallback: nothing is ever <unk>, even characters the corpus never had.
    for text in HARD_STRINGS:
        assert 0 not in tok.encode(text), text
    options = tok.options()
    assert options["byte_fallback"] and not options["add_dummy_prefix"] and options["split_digits"]
    assert options["normalization_rule_name"] == "identity" and not options["remove_extra_whitespaces"]
    digit_tokens = [t for t in (tok.decode([i]) for i in tok.encode("明治2024年 1905")) if any(map(str.isdigit, t))]
    assert digit_tokens == list("20241905")  # split_digits: one token per digit


@pytest.mark.parametrize("name", list(SPECS))
def test_eos_is_one_control_id(loaded, name):
    tok = loaded[name]
    eos = tok.eos_id
    assert isinstance(eos, int) and 0 <= eos < tok.vocab_size
    assert tok.special_tokens == {EOS: eos}
    # Typed in text, "<|endoftext|>" is ordinary characters: never the EOS id, and it round-trips.
    text = "一つ目の文書。<|endoftext|>二つ目"
    assert eos not in tok.encode(text)
    assert tok.decode(tok.encode(text)) == text
    # The EOS id decodes as nothing, so documents joined by it decode to their concatenation.
    a, b = "吾輩は猫である。", "名前はまだ無い。"
    assert tok.decode([eos]) == ""
    assert tok.decode(tok.encode(a) + [eos] + tok.encode(b)) == a + b


@pytest.mark.parametrize("name", list(SPECS))
def test_characters_per_token_reported(trained, loaded, name):
    tok = loaded[name]
    manifest = storage.read_manifest(trained[name])
    meta = json.loads(storage.read_text(storage.join(trained[name], TOKENIZER_JSON)))
    cpt = meta["stats"]["chars_per_token"]
    assert manifest["stats"]["chars_per_token"] == cpt
    assert manifest["counts"]["validation_tokens"] == meta["stats"]["validation"]["tokens"] > 0
    if tok.kind == "bytes":
        assert 0.3 < cpt < 0.4  # ~3 UTF-8 bytes per Japanese character
        assert meta["stats"]["validation"]["bytes_per_token"] == 1.0
    else:
        assert cpt > 1.0
        assert manifest["counts"]["sampled_sentences"] == manifest["counts"]["train_sentences"] > 1000
        assert meta["options"]["vocab_size"] == VOCAB


def test_tokenizer_json_describes_the_artifact(trained, clean_corpus):
    meta = json.loads(storage.read_text(storage.join(trained["mecab-unigram"], TOKENIZER_JSON)))
    corpus_fp = storage.read_manifest(clean_corpus)["fingerprint"]
    assert meta["kind"] == "mecab+sentencepiece" and meta["vocab_size"] == VOCAB and meta["eos_id"] == 1
    assert meta["special_tokens"] == {EOS: 1}
    assert meta["corpus"] == {"uri": clean_corpus, "fingerprint": corpus_fp}
    assert meta["options"]["pretokenization_delimiter"] == "\ue000"
    assert meta["config"]["model_type"] == "unigram" and meta["config"]["seed"] == 0
    assert meta["stats"]["segmenter"]["dictionary"] == "unidic-lite"
    manifest = storage.read_manifest(trained["mecab-unigram"])
    assert manifest["stage"] == "tokenizer"
    # the input is named relative to the artifact, so the root can move
    assert manifest["inputs"] == [
        {"uri": storage.relative_ref(clean_corpus, trained["mecab-unigram"]), "fingerprint": corpus_fp}
    ]
    assert stage.input_uri(manifest, manifest["inputs"][0]["uri"]) == os.path.normpath(clean_corpus)
    assert {f["path"] for f in manifest["files"]} == {"spm.model", "spm.vocab", TOKENIZER_JSON}
    assert manifest["timings"]["mecab_s"] > 0
    vocab = storage.read_text(storage.join(trained["mecab-unigram"], "spm.vocab")).splitlines()
    assert len(vocab) == VOCAB + 1 and vocab[3] == "2\t\\n\t0\tuser_defined"


# ----------------------------------------------------------------- artifacts


@pytest.mark.parametrize("name", list(SPECS))
def test_save_load_local_and_gcs(trained, loaded, clean_corpus, gcs_emulator, tmp_path, name):
    tok = loaded[name]
    texts = validation_texts(clean_corpus)[:2] + HARD_STRINGS
    expected = [tok.encode(t) for t in texts]
    for uri in (str(tmp_path / "copy"), f"gs://{gcs_emulator.bucket}/tok-test/{name}"):
        assert tok.save(uri) == uri
        manifest = storage.read_manifest(uri)
        assert manifest["fingerprint"] == storage.read_manifest(trained[name])["fingerprint"]
        assert {f["path"] for f in manifest["files"]} == {
            storage.file_info(u, root=uri)["path"] for u in storage.list_files(uri)
        } - {storage.MANIFEST}
        again = Tokenizer.load(uri)
        assert type(again) is type(tok) and again.vocab_size == tok.vocab_size and again.eos_id == tok.eos_id
        assert [again.encode(t) for t in texts] == expected
        assert again.stats == tok.stats and again.corpus == tok.corpus


@pytest.mark.parametrize("name", list(SPECS))
def test_tokenizers_pickle_for_worker_processes(loaded, name):
    tok = loaded[name]
    again = pickle.loads(pickle.dumps(tok))
    assert [again.encode(t) for t in HARD_STRINGS] == [tok.encode(t) for t in HARD_STRINGS]
    assert again.kind == tok.kind and again.stats == tok.stats


def test_copy_on_gcs_has_the_same_fingerprint_so_training_skips(trained, clean_corpus, gcs_emulator):
    uri = f"gs://{gcs_emulator.bucket}/tok-test/skip"
    Tokenizer.load(trained["sentencepiece-bpe"]).save(uri)
    before = storage.read_manifest(uri)
    assert before["fingerprint"] == storage.read_manifest(trained["sentencepiece-bpe"])["fingerprint"]
    assert train_tokenizer(clean_corpus, "sentencepiece", VOCAB, uri, model_type="bpe") == uri
    assert storage.read_manifest(uri)["created_at"] == before["created_at"]  # not rebuilt


def test_training_is_deterministic_and_reruns_skip(clean_corpus, tmp_path):
    # sample_sentences below the corpus's ~1,460 lines: the seeded reservoir sample is exercised.
    # The second run is another process: sentencepiece's own sampling differs across processes.
    kwargs = dict(model_type="unigram", sample_sentences=900, seed=7)
    a = train_tokenizer(clean_corpus, "sentencepiece", 2600, str(tmp_path / "a"), **kwargs)
    b = str(tmp_path / "b")
    code = (
        "from gpt2ja.tokenization.train import train_tokenizer\n"
        f"train_tokenizer({clean_corpus!r}, 'sentencepiece', 2600, {b!r}, **{kwargs!r})\n"
    )
    result = procs.run([sys.executable, "-c", code], cwd=REPO)
    assert result.returncode == 0, result.stderr
    for name in ("spm.vocab", "spm.model"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert storage.read_manifest(a)["counts"]["sampled_sentences"] == 900
    assert storage.read_manifest(a)["fingerprint"] == storage.read_manifest(b)["fingerprint"]
    # A rerun with the same config and corpus does nothing; a new seed retrains.
    mtime = os.stat(tmp_path / "a" / "spm.model").st_mtime_ns
    assert train_tokenizer(clean_corpus, "sentencepiece", 2600, a, **kwargs) == a
    assert os.stat(tmp_path / "a" / "spm.model").st_mtime_ns == mtime
    train_tokenizer(clean_corpus, "sentencepiece", 2600, a, model_type="unigram", sample_sentences=900, seed=8)
    assert (tmp_path / "a" / "spm.vocab").read_bytes() != (tmp_path / "b" / "spm.vocab").read_bytes()
    assert storage.read_manifest(a)["config"]["seed"] == 8


def test_reservoir_and_sentences():
    picks = [Reservoir(10, seed=3) for _ in range(2)]
    for r in picks:
        for i in range(1000):
            r.add(i)
    assert picks[0].sample() == picks[1].sample() == sorted(picks[0].sample())
    assert len(set(picks[0].sample())) == 10 and max(picks[0].sample()) > 100
    small = Reservoir(10, seed=3)
    for i in range(4):
        small.add(i)
    assert small.sample() == [0, 1, 2, 3]
    line = "あ" * 5 + "。" + "い" * 12
    cut = list(training_sentences(f"{line}\n\n  \nう", max_chars=8))
    assert cut == ["あああああ。", "いいいいいいいい", "いいいい", "う"]
    assert all(len(s) <= 8 for s in cut)


# ----------------------------------------------------------------- MeCab


def test_mecab_pieces_never_cross_word_boundaries(loaded, clean_corpus):
    seg = Segmenter()
    sentence = "ある日の暮方の事である。"  # the first line of 羅生門, in the training split

    def boundaries(parts: list[str]) -> set[int]:
        out, pos = set(), 0
        for p in parts:
            pos += len(p)
            out.add(pos)
        return out

    words = seg.words(sentence)
    assert words == ["ある", "日", "の", "暮方", "の", "事", "で", "ある", "。"]
    mecab_pieces = loaded["mecab-unigram"].pieces(sentence)
    assert boundaries(words) <= boundaries(mecab_pieces)
    # Plain sentencepiece does merge across them ("である" = で|ある): the check is not vacuous.
    assert not boundaries(words) <= boundaries(loaded["sentencepiece-unigram"].pieces(sentence))

    # Stronger: every learned piece lies inside one MeCab word of the training text.
    surfaces = set()
    for doc in read_documents(storage.join(clean_corpus, "train")):
        for line in training_sentences(doc.text):
            surfaces.update(w.replace(" ", "\u2581") for w in seg.words(line))
    haystack = "\0".join(surfaces)

    def crossing(tok) -> list[str]:
        learned = (tok.id_to_piece(i) for i in range(N_META_PIECES, tok.vocab_size))
        return [p for p in learned if p not in haystack]

    assert crossing(loaded["mecab-unigram"]) == []
    assert len(crossing(loaded["sentencepiece-unigram"])) > 50


def test_mecab_kind_needs_no_mecab_at_inference(trained):
    code = (
        "import sys\n"
        "sys.modules['fugashi'] = None; sys.modules['unidic_lite'] = None  # any import of them fails\n"
        "from gpt2ja.tokenization.tokenizer import Tokenizer\n"
        f"tok = Tokenizer.load({trained['mecab-unigram']!r})\n"
        "text = '下人は、すばやく、老婆の腕を掴んでいました。\\n🍣'\n"
        "assert tok.kind == 'mecab+sentencepiece' and tok.decode(tok.encode(text)) == text\n"
        "assert 'gpt2ja.tokenization.mecab' not in sys.modules\n"
        "print('ok')\n"
    )
    result = procs.run([sys.executable, "-c", code], cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# ----------------------------------------------------------------- bad input


def test_missing_corpus_manifest(tmp_path):
    corpus, out = str(tmp_path / "nothing"), str(tmp_path / "tok")
    with pytest.raises(TokenizerError) as excinfo:
        train_tokenizer(corpus, "sentencepiece", 1000, out)
    assert "no _MANIFEST.json" in one_line_error(excinfo, corpus)
    assert not os.path.exists(out)


@pytest.mark.parametrize("kind", ["bytes", "sentencepiece", "mecab+sentencepiece"])
def test_empty_corpus(tmp_path, kind):
    empty = write_clean_corpus(tmp_path / "empty", [], [])
    blank = write_clean_corpus(tmp_path / "blank", [Document.new(source="t", url="u", text=" \n\n")], [])
    for corpus in (empty, blank):
        out = str(tmp_path / f"tok-{Path(corpus).name}")
        with pytest.raises(TokenizerError) as excinfo:
            train_tokenizer(corpus, kind, 257 if kind == "bytes" else 1000, out)
        one_line_error(excinfo, corpus, "nothing to train")
        assert storage.read_manifest(out) is None  # no artifact published


def test_vocab_too_small_for_byte_fallback(clean_corpus, tmp_path):
    out = str(tmp_path / "small")
    with pytest.raises(TokenizerError) as excinfo:
        train_tokenizer(clean_corpus, "sentencepiece", 1000, out, character_coverage=0.98)
    message = one_line_error(excinfo, clean_corpus, out, "vocab size 1000", "at least")
    minimum = int(message.split("at least ")[1].split(";")[0])
    assert storage.read_manifest(out) is None and not storage.list_files(out)
    # The minimum is exactly sentencepiece's own limit: it trains.
    train_tokenizer(clean_corpus, "sentencepiece", minimum, out, model_type="bpe", character_coverage=0.98)
    assert Tokenizer.load(out).vocab_size == minimum
    with pytest.raises(TokenizerError) as excinfo:
        train_tokenizer(clean_corpus, "sentencepiece", 100, out)
    one_line_error(excinfo, out, "vocab size 100")


def test_vocab_too_large_for_the_corpus(clean_corpus, tmp_path):
    out = str(tmp_path / "huge")
    with pytest.raises(TokenizerError) as excinfo:
        train_tokenizer(clean_corpus, "sentencepiece", 60000, out, sample_sentences=300)
    one_line_error(excinfo, clean_corpus, out, "vocab size 60000", "at most")
    assert storage.read_manifest(out) is None


def test_unknown_kind_model_type_and_bytes_vocab(clean_corpus, tmp_path):
    out = str(tmp_path / "x")
    with pytest.raises(TokenizerError) as excinfo:
        train_tokenizer(clean_corpus, "wordpiece", 1000, out)
    one_line_error(excinfo, out, "wordpiece", "bytes, sentencepiece, mecab+sentencepiece")
    with pytest.raises(TokenizerError) as excinfo:
        train_tokenizer(clean_corpus, "sentencepiece", 1000, out, model_type="char")
    one_line_error(excinfo, out, "'char'", "unigram, bpe")
    with pytest.raises(TokenizerError) as excinfo:
        train_tokenizer(clean_corpus, "bytes", 32000, out)
    one_line_error(excinfo, out, "257")
    assert not os.path.exists(out)


def test_load_refuses_partial_or_damaged_artifacts(trained, tmp_path):
    partial = tmp_path / "partial"
    Tokenizer.load(trained["sentencepiece-bpe"]).save(str(partial))
    (partial / storage.MANIFEST).unlink()
    with pytest.raises(TokenizerError) as excinfo:
        Tokenizer.load(str(partial))
    one_line_error(excinfo, str(partial), "no _MANIFEST.json")

    damaged = tmp_path / "damaged"
    Tokenizer.load(trained["sentencepiece-bpe"]).save(str(damaged))
    model = damaged / "spm.model"
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(TokenizerError) as excinfo:
        Tokenizer.load(str(damaged))
    one_line_error(excinfo, str(damaged), "spm.model", "checksum")


def test_decode_rejects_foreign_ids(loaded):
    for tok in loaded.values():
        with pytest.raises(TokenizerError):
            tok.decode([tok.vocab_size + 5])
    assert ByteTokenizer().decode([0xE7, 0x8C]) == "\ufffd"  # invalid UTF-8 (e.g. sampled ids) → U+FFFD


def test_cli_train_prints_a_summary(trained, clean_corpus, capsys):
    from gpt2ja.cli import main

    main(
        [
            "tokenizer",
            "train",
            "--corpus",
            clean_corpus,
            "--vocab-size",
            str(VOCAB),
            "--out",
            trained["sentencepiece-bpe"],
            "--model-type",
            "bpe",
        ]
    )
    out = capsys.readouterr().out.strip()
    assert "\n" not in out
    for part in (
        "sentencepiece (bpe)",
        f"vocab size {VOCAB:,}",
        "characters per token",
        "trained in",
        "Already up to date",
    ):
        assert part in out, (part, out)

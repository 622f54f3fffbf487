"""Small clean corpora for tests, made from the bundled mirror as the clean stage would lay them out."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from gpt2ja.corpus.document import Document
from gpt2ja.corpus.jsonl import ShardWriter
from gpt2ja.crawler.extract.aozora import from_zip
from gpt2ja.infra import storage

REPO = Path(__file__).resolve().parent.parent
ZIPS = sorted((REPO / "examples" / "aozora-mirror" / "cards").glob("*/files/*.zip"))


def write_clean_corpus(root: Path, train: list[Document], validation: list[Document]) -> str:
    """A clean-stage artifact: train/ and validation/ parts plus a manifest."""
    uri = str(root)
    for split, docs in (("train", train), ("validation", validation)):
        with ShardWriter(storage.join(uri, split), max_docs=20) as out:
            for doc in docs:
                out.write(doc)
    files = [storage.file_info(u, root=uri) for u in storage.list_files(uri)]
    storage.write_manifest(
        uri,
        storage.build_manifest(
            stage="clean",
            config={"test": root.name},
            counts={"documents": len(train) + len(validation)},
            files=files,
            timings={},
        ),
    )
    return uri


def mirror_split() -> tuple[list[Document], list[Document]]:
    """Every mirror work as a Document (NFKC), split train/validation by id hash as the clean stage does."""
    docs = []
    for path in ZIPS:
        work = from_zip(path.read_bytes(), path.name)
        docs.append(
            Document.new(
                source="aozora",
                url=str(path.relative_to(REPO)),
                title=work.title,
                author=work.author,
                text=unicodedata.normalize("NFKC", work.text),
            )
        )
    validation = [d for d in docs if int(d.id, 16) % 8 == 0]
    train = [d for d in docs if int(d.id, 16) % 8 != 0]
    return train, validation


def data_pipeline_config(tmp_path: Path) -> Path:
    """``configs/demo.yaml`` up to the shards (no model stages), rooted in ``tmp_path``; the config file's path."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    for section in ("train", "evaluate", "generate", "export"):
        config.pop(section)
    config["root"] = str(tmp_path / "root")
    config["crawl"][0]["serve_mirror"] = str(REPO / "examples" / "aozora-mirror")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def mirror_stages(base: Path, *, part_docs: int | None = None) -> dict:
    """The mirror's works as a folder of zips, its raw crawl, clean corpus (30 % validation) and sp3000 tokenizer.

    Built in-process under ``base``; returns ``{"base", "text", "raw", "clean", "tokenizer"}`` (URIs as str).
    """
    import shutil

    from gpt2ja.corpus.clean import CleanConfig, run_clean
    from gpt2ja.crawler.files import crawl_files
    from gpt2ja.tokenization.train import train_tokenizer

    text = base / "text"
    text.mkdir()
    for z in ZIPS:
        shutil.copy(z, text / z.name)
    raw = crawl_files(str(text), str(base / "root"), "all", **({"part_docs": part_docs} if part_docs else {}))
    clean = run_clean(
        CleanConfig(inputs=[raw], out=str(base / "root" / "clean" / "c"), workers=2, split={"validation_fraction": 0.3})
    )
    tok = train_tokenizer(clean, "sentencepiece", 3000, str(base / "root" / "tokenizers" / "sp"))
    return {"base": base, "text": str(text), "raw": raw, "clean": clean, "tokenizer": tok}


def write_tiny_run(root: Path, tok=None, *, context: int = 32, randomize: bool = True, seed: int = 3) -> Path:
    """``{root}/run``: an untrained tiny model (checkpoint step 1) with its hparams and tokenizer copy.

    ``randomize`` gives every weight a random value (LayerNorm gains near 1), so logits
    differ across ids: what an export's logit check needs. The bytes tokenizer by default.
    Written by whichever Keras backend this process runs (no TensorFlow needed).
    """
    import json

    import keras
    import numpy as np

    from gpt2ja.model import checkpoint, gpt2, runs
    from gpt2ja.model.presets import ModelConfig
    from gpt2ja.tokenization.bytes_tokenizer import ByteTokenizer

    keras.utils.set_random_seed(seed)
    tok = tok or ByteTokenizer()
    cfg = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, context_length=context, dropout=0.0)
    lm = gpt2.build_model(cfg)
    if randomize:
        rng = np.random.default_rng(seed + 2)
        for v in lm.backbone.weights:
            base = 1.0 if v.path.endswith("gamma") else 0.0
            v.assign(base + rng.normal(0.0, 0.15, size=tuple(v.shape)).astype(np.float32))
    run = root / "run"
    (run / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (run / runs.HPARAMS).write_text(json.dumps({"model": cfg.model_dump(), "padded_vocab_size": cfg.padded_vocab_size}))
    tok.save(str(run / runs.TOKENIZER_DIR))
    checkpoint.save(
        str(run / runs.CHECKPOINT_DIR),
        1,
        checkpoint.model_arrays(lm),
        examples=0,
        backend=keras.backend.backend(),
        keep=1,
    )
    return run


def mirror_texts(folder: Path) -> Path:
    """``folder`` filled with the bundled mirror's 48 text zips (a `files` source); returns it."""
    import shutil

    repo = Path(__file__).resolve().parent.parent
    folder.mkdir(parents=True, exist_ok=True)
    for z in sorted((repo / "examples" / "aozora-mirror" / "cards").glob("*/files/*.zip")):
        shutil.copy(z, folder / f"{z.parent.parent.name}-{z.name}")
    return folder

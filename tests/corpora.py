"""Small clean corpora for tests, made from the bundled mirror as the clean stage would lay them out."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from corpus.document import Document
from corpus.jsonl import ShardWriter
from crawler.extract.aozora import from_zip
from infra import storage

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
    storage.write_manifest(uri, storage.build_manifest(
        stage="clean", config={"test": root.name}, counts={"documents": len(train) + len(validation)},
        files=files, timings={}))
    return uri


def mirror_split() -> tuple[list[Document], list[Document]]:
    """Every mirror work as a Document (NFKC), split train/validation by id hash as the clean stage does."""
    docs = []
    for path in ZIPS:
        work = from_zip(path.read_bytes(), path.name)
        docs.append(Document.new(source="aozora", url=str(path.relative_to(REPO)), title=work.title,
                                 author=work.author, text=unicodedata.normalize("NFKC", work.text)))
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

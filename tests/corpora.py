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

"""Train/validation split by a hash of the document id: stable across corpus refreshes.

A document's split depends only on its id (and the salt), never on its
position or on which other documents exist, so a refresh that adds documents
never moves an old one from train to validation or back. Whole authors or sites
can be held out for validation (no text of theirs is trained on).

Example::

    >>> cfg = SplitConfig(validation_fraction=0.5, salt="x")
    >>> split_of("0123abcd", "", "", cfg) == split_of("0123abcd", "", "", cfg)
    True
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

SPLITS = ("train", "validation")


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt holdout_authors must not leak that author

    validation_fraction: float = Field(
        0.05, ge=0.0, le=0.5, description="share of documents (by id hash) that go to validation"
    )
    salt: str = Field("gpt2ja-split-v1", description="changing it reshuffles the split; keep it across refreshes")
    holdout_authors: list[str] = Field(
        default_factory=list, description="every document by these authors goes to validation"
    )
    holdout_sites: list[str] = Field(
        default_factory=list, description="every document from these host names goes to validation"
    )


def id_fraction(doc_id: str, salt: str) -> float:
    """A number in [0, 1) determined by the id alone."""
    digest = hashlib.sha256(f"{salt}\0{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(doc_id: str, author: str, url: str, cfg: SplitConfig) -> str:
    if author and author.replace(" ", "").replace("\u3000", "") in {
        a.replace(" ", "").replace("\u3000", "") for a in cfg.holdout_authors
    }:
        return "validation"
    if cfg.holdout_sites and (urlsplit(url).hostname or "") in cfg.holdout_sites:
        return "validation"
    return "validation" if id_fraction(doc_id, cfg.salt) < cfg.validation_fraction else "train"

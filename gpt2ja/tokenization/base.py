"""The one tokenizer interface every stage uses, and its on-disk artifact (the kinds subclass it;
:mod:`gpt2ja.tokenization.tokenizer` gathers the interface and every kind: import it from there).

A tokenizer artifact is a directory (local or ``gs://``) holding the kind's
files (e.g. ``spm.model`` + ``spm.vocab``), a ``tokenizer.json`` that says
what it is, and a ``_MANIFEST.json`` written last::

    tokenizers/sp32k/
        spm.model          the sentencepiece ModelProto (all that encode/decode need)
        spm.vocab          id, piece, score, type as TSV, for people (pieces escaped)
        tokenizer.json     kind, vocab_size, eos_id, special tokens, options,
                           training config, training corpus {uri, fingerprint}, stats
        _MANIFEST.json     stage "tokenizer", fingerprint, files + sha256, timings

Contract of every kind:

* ``decode(encode(text)) == text`` for every valid Unicode string (rare kanji,
  emoji, control characters, runs of spaces and newlines included).
* ``eos_id`` is the id of ``<|endoftext|>``. It is a *control* token: ``encode``
  never produces it (text that literally contains ``"<|endoftext|>"`` is encoded
  as ordinary pieces and round-trips as those characters) and ``decode`` renders
  it as nothing. Documents are joined with it by the shard writer.

Example::

    tok = Tokenizer.load("data/tokenizers/sp32k")      # or gs://bucket/tokenizers/sp32k
    ids = tok.encode("吾輩は猫である。")
    assert tok.decode(ids) == "吾輩は猫である。"
    tok.save("gs://bucket/runs/r1/tokenizer")          # copy with its manifest
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from gpt2ja.infra import storage
from gpt2ja.infra.errors import Gpt2jaError
from gpt2ja.infra.stage import require

EOS = "<|endoftext|>"
TOKENIZER_JSON = "tokenizer.json"
FORMAT = "gpt2ja-tokenizer/1"
STAGE = "tokenizer"


class TokenizerError(Gpt2jaError, ValueError):
    """A tokenizer that cannot be trained, loaded or used: one line naming the artifact and the fix."""


class Tokenizer(abc.ABC):
    """Text ↔ token ids; subclasses are the kinds (``bytes``, ``sentencepiece``, ``mecab+sentencepiece``).

    Besides encoding, a tokenizer carries its provenance so that ``save`` can
    write a complete artifact anywhere: ``config`` (the training settings that
    are fingerprinted), ``corpus`` (``{"uri", "fingerprint"}`` of the training
    corpus's manifest, or None), ``stats`` (e.g. characters per token on the
    validation split), ``counts`` and ``timings``.
    """

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A class that names its ``kind`` becomes the one :func:`tokenizer_class` returns for it."""
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _CLASSES[cls.kind] = cls

    def __init__(
        self,
        *,
        config: dict | None = None,
        corpus: dict | None = None,
        stats: dict | None = None,
        counts: dict | None = None,
        timings: dict | None = None,
    ) -> None:
        self.config = dict(config or {"kind": self.kind})
        self.corpus = dict(corpus) if corpus else None
        self.stats = dict(stats or {})
        self.counts = dict(counts or {})
        self.timings = dict(timings or {})
        self.fingerprint: str | None = None  # the artifact's manifest fingerprint, once saved or loaded

    # ------------------------------------------------------------ the interface

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``range(vocab_size)``."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int:
        """The id of ``<|endoftext|>`` (a control token: never produced by ``encode``, decoded as "")."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of ``text``; ``decode`` of them gives ``text`` back exactly."""

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """``[encode(t) for t in texts]``; kinds may use ``num_threads`` native threads."""
        return [self.encode(t) for t in texts]

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; ``eos_id`` renders as nothing, invalid UTF-8 as U+FFFD."""

    @abc.abstractmethod
    def options(self) -> dict[str, Any]:
        """The kind's options as written to tokenizer.json (what was used to build it)."""

    @abc.abstractmethod
    def files(self) -> dict[str, bytes]:
        """The kind's own files (name → content) that ``load`` needs, plus any for people."""

    @classmethod
    @abc.abstractmethod
    def from_files(cls, meta: dict, read: Any) -> "Tokenizer":
        """Rebuild from tokenizer.json ``meta``; ``read(name) -> bytes`` reads a file of the artifact."""

    # ------------------------------------------------------------ description

    @property
    def special_tokens(self) -> dict[str, int]:
        return {EOS: self.eos_id}

    def describe(self) -> dict[str, Any]:
        """The content of tokenizer.json."""
        return {
            "format": FORMAT,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "special_tokens": self.special_tokens,
            "eos_decodes_as": "",
            "options": self.options(),
            "files": sorted(self.files()),
            "config": self.config,
            "corpus": self.corpus,
            "stats": self.stats,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r} vocab_size={self.vocab_size} eos_id={self.eos_id}>"

    # ------------------------------------------------------------ artifact I/O

    def manifest(self, files: list[dict]) -> dict:
        """The artifact manifest: fingerprint of ``config`` and the training corpus's manifest."""
        return storage.build_manifest(
            stage=STAGE,
            config=self.config,
            inputs=[self.corpus] if self.corpus else [],
            counts={"vocab_size": self.vocab_size, **self.counts},
            files=files,
            timings=self.timings,
            extra={"kind": self.kind, "stats": self.stats},
        )

    def save(self, uri: str) -> str:
        """Write the artifact to ``uri`` (local dir or ``gs://``), ``_MANIFEST.json`` last; returns ``uri``.

        An old manifest at ``uri`` is removed first, so an interrupted save leaves
        a directory without a manifest (partial), never a manifest over a mix of
        old and new files. The tokenizer stage uses :meth:`write_files` under
        :func:`gpt2ja.infra.stage.run_stage` instead, which also locks and verifies.
        """
        if storage.read_manifest(uri) is not None:
            storage.delete(storage.join(uri, storage.MANIFEST))
        storage.write_manifest(uri, self.write_files(uri))
        return uri

    def write_files(self, uri: str) -> dict:
        """Write every file of the artifact but the manifest to ``uri``; returns the manifest to write last."""
        with tempfile.TemporaryDirectory(prefix=f"gpt2ja-tokenizer-{os.getpid()}-") as tmp:
            for name, data in {**self.files(), TOKENIZER_JSON: _json_bytes(self.describe())}.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
            infos = [storage.file_info(p, root=tmp) for p in storage.list_files(tmp)]
            storage.upload_dir(tmp, uri)
        return self.manifest(infos)

    @staticmethod
    def load(uri: str) -> "Tokenizer":
        """Load any kind from an artifact directory; checks the manifest and file checksums."""
        manifest = require(uri, "tokenizer", "train it again with `gpt2ja tokenizer train --out ...`", TokenizerError)
        sums = {f["path"]: f.get("sha256") for f in manifest.get("files", [])}

        def read(name: str) -> bytes:
            if name not in sums:
                raise TokenizerError(
                    f"tokenizer {uri}: {name} is not listed in its manifest; the artifact is damaged, train it again"
                )
            data = storage.read_bytes(storage.join(uri, name))
            if hashlib.sha256(data).hexdigest() != sums[name]:
                raise TokenizerError(
                    f"tokenizer {uri}: {name} does not match the checksum in its manifest; "
                    "the artifact is damaged, train or copy it again"
                )
            return data

        try:
            meta = json.loads(read(TOKENIZER_JSON).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerError(f"tokenizer {uri}: unreadable {TOKENIZER_JSON} ({err}); train it again") from None
        cls = tokenizer_class(meta.get("kind", ""), where=f"tokenizer {uri}")
        tok = cls.from_files(meta, read)
        if tok.vocab_size != meta.get("vocab_size"):
            raise TokenizerError(
                f"tokenizer {uri}: vocab size {tok.vocab_size} of the model differs from "
                f"{meta.get('vocab_size')} in {TOKENIZER_JSON}; "
                "the artifact is damaged, train it again"
            )
        tok.config = meta.get("config") or tok.config
        tok.corpus = meta.get("corpus")
        tok.stats = meta.get("stats") or {}
        tok.counts = {k: v for k, v in manifest.get("counts", {}).items() if k != "vocab_size"}
        tok.timings = manifest.get("timings", {})
        tok.fingerprint = manifest.get("fingerprint")  # its identity: the same in every copy of the artifact
        return tok


KINDS = ("bytes", "sentencepiece", "mecab+sentencepiece")
#: each kind's class by name, filled as the kinds' modules define them (:meth:`Tokenizer.__init_subclass__`)
_CLASSES: dict[str, type[Tokenizer]] = {}


def tokenizer_class(kind: str, *, where: str) -> type[Tokenizer]:
    """The class of ``kind``; an unknown kind is a TokenizerError naming ``where``.

    The kinds register themselves when their modules are imported; :mod:`gpt2ja.tokenization.tokenizer` imports
    them all."""
    if kind not in _CLASSES:
        raise TokenizerError(f"{where}: unknown tokenizer kind {kind!r}; use one of {', '.join(KINDS)}")
    return _CLASSES[kind]


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")

"""Tokenizer and shard speed on a clean corpus, printed with the machine.

For each tokenizer kind: training time, characters per token on the
validation split, encoding MB/s with 1 and 2 processes; then shard write
throughput (tokens/s) and shard read throughput through ``make_dataset``
(tokens/s), next to the training throughput of the ``tiny`` and ``small``
presets on the same machine, so the reader sees whether input can ever be
the bottleneck.

Usage (the clean corpus comes from ``gpt2ja crawl files`` + ``gpt2ja clean``
over ``../shared/aozora-bulk``; see docs/speed.md)::

    .venv/bin/python benchmarks/tokens_bench.py --corpus data/bulk/clean/aozora-bulk \\
        [--kinds bytes,sp-unigram-16k,mecab-unigram-8k] [--sample 100000] [--seq-len 1024]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from crawl_bench import machine  # noqa: E402

KINDS = {  # name: (kind, vocab, model_type)
    "bytes": ("bytes", 257, "unigram"),
    "sp-unigram-8k": ("sentencepiece", 8000, "unigram"),
    "sp-unigram-16k": ("sentencepiece", 16000, "unigram"),
    "sp-unigram-32k": ("sentencepiece", 32000, "unigram"),
    "sp-bpe-32k": ("sentencepiece", 32000, "bpe"),
    "mecab-unigram-8k": ("mecab+sentencepiece", 8000, "unigram"),
    "mecab-unigram-16k": ("mecab+sentencepiece", 16000, "unigram"),
}

_TOKENIZERS: dict = {}  # per process, by URI


def _encode_chunk(args):
    uri, texts = args
    if uri not in _TOKENIZERS:
        from gpt2ja.tokenization.tokenizer import Tokenizer

        _TOKENIZERS[uri] = Tokenizer.load(uri)
    tok = _TOKENIZERS[uri]
    return sum(len(tok.encode(t)) for t in texts)


def encode_rate(uri: str, texts: list[str], processes: int) -> float:
    size = sum(len(t.encode("utf-8")) for t in texts)
    chunks = [(uri, texts[i :: processes * 4]) for i in range(processes * 4)]
    if processes == 1:
        t0 = time.perf_counter()
        for c in chunks:
            _encode_chunk(c)
        return size / 1e6 / (time.perf_counter() - t0)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_encode_chunk, chunks[:processes])  # load the tokenizer in every worker first
        t0 = time.perf_counter()
        pool.map(_encode_chunk, chunks)
        return size / 1e6 / (time.perf_counter() - t0)


def bench_tokenizers(corpus: str, names: list[str], sample: int, root: str) -> dict[str, str]:
    from gpt2ja.corpus.jsonl import read_documents
    from gpt2ja.infra import storage
    from gpt2ja.tokenization.tokenizer import TokenizerError
    from gpt2ja.tokenization.train import train_tokenizer

    texts = [d.text for d in read_documents(storage.join(corpus, "validation"))]
    print(f"validation split: {len(texts)} documents, {sum(len(t) for t in texts):,} characters")
    made = {}
    for name in names:
        kind, vocab, model_type = KINDS[name]
        out = os.path.join(root, name)
        t0 = time.perf_counter()
        try:
            train_tokenizer(corpus, kind, vocab, out, model_type=model_type, sample_sentences=sample)
        except TokenizerError as exc:
            print(f"tokenizer {name}: not trained: {exc}")
            continue
        train_s = time.perf_counter() - t0
        from gpt2ja.tokenization.tokenizer import Tokenizer

        tok = Tokenizer.load(out)
        chars = sum(len(t) for t in texts)
        tokens = sum(len(tok.encode(t)) for t in texts)
        r1, r2 = encode_rate(out, texts, 1), encode_rate(out, texts, 2)
        print(
            f"tokenizer {name}: trained in {train_s:.1f} s ({sample:,} sampled lines), "
            f"{chars / tokens:.3f} characters/token, encoding {r1:.1f} MB/s (1 process), {r2:.1f} MB/s (2)"
        )
        made[name] = out
    return made


def bench_shards(corpus: str, tok_uri: str, seq_len: int, root: str) -> str:
    from gpt2ja.infra import storage
    from gpt2ja.tokenization.shards import ShardsConfig, write_shards

    best = None
    for workers in (1, 2):
        out = os.path.join(root, f"shards-w{workers}")
        t0 = time.perf_counter()
        write_shards(corpus, tok_uri, out, ShardsConfig(seq_len=seq_len, workers=workers))
        wall = time.perf_counter() - t0
        tokens = storage.read_manifest(out)["counts"]["tokens"]
        print(
            f"shards write, {workers} worker(s): {tokens:,} tokens in {wall:.1f} s = {tokens / wall:,.0f} tokens/s "
            f"(TensorFlow import in each worker included)"
        )
        best = out
    return best


def bench_read(shards: str, seq_len: int, batch: int = 8, seconds: float = 10.0) -> float:
    from gpt2ja.model.data import make_dataset

    ds = make_dataset(shards, "train", batch, shuffle=True, repeat=True)
    it = iter(ds)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        inputs, _ = next(it)
        n += int(inputs.shape[0]) * int(inputs.shape[1])
    rate = n / (time.perf_counter() - t0)
    print(f"shards read (make_dataset, batch {batch}, seq_len {seq_len}, shuffled): {rate:,.0f} tokens/s")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(REPO / "data" / "bulk" / "clean" / "aozora-bulk"))
    ap.add_argument("--kinds", default="bytes,sp-unigram-16k,mecab-unigram-8k")
    ap.add_argument("--sample", type=int, default=100_000, help="sentences sampled for tokenizer training")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--shards-with", default="sp-unigram-16k", help="which trained tokenizer builds the shards")
    args = ap.parse_args()
    from gpt2ja.infra import storage

    if storage.read_manifest(args.corpus) is None:
        raise SystemExit(f"error: {args.corpus} is not a clean corpus; build it first (see the docstring)")
    print(f"machine: {machine()}")
    names = [n.strip() for n in args.kinds.split(",") if n.strip()]
    with tempfile.TemporaryDirectory() as root:
        made = bench_tokenizers(args.corpus, names, args.sample, root)
        tok = made.get(args.shards_with) or next(iter(made.values()))
        shards = bench_shards(args.corpus, tok, args.seq_len, root)
        bench_read(shards, args.seq_len)


if __name__ == "__main__":
    main()

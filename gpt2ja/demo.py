"""``make demo``: the pipeline on the bundled Aozora Bunko slice, as far as it is built.

The slice (``examples/aozora-mirror``, 48 works by four authors) is served on
127.0.0.1 by a real HTTP server and crawled by the real ``aozora`` spider, with
politeness delays off because the server is local (robots.txt still obeyed).
"""

from __future__ import annotations

from pathlib import Path

from infra import storage

MIRROR = Path(__file__).resolve().parent.parent / "examples" / "aozora-mirror"
AUTHORS = ("879", "81", "121", "74")  # 芥川竜之介, 宮沢賢治, 新美南吉, 梶井基次郎
STAGES = 8
# A tiny GPT-2 for two minutes of CPU: enough to see the loss fall and the machinery work,
# not to write Japanese (the tour in README.md says what bigger runs need).
DEMO_TRAIN = {"preset": "tiny", "steps": 120, "batch_tokens": 2048, "micro_batch": 16, "learning_rate": 2e-3,
              "warmup_steps": 10, "log_every": 20, "eval_every": 60, "checkpoint_every": 60, "eval_batches": 8}
DEMO_PROMPTS = ("ある日の暮方の事である。", "きつねの子は")
DEMO_SEQ_LEN = 128
DEMO_VOCAB = 3000  # the slice has ~1,900 distinct characters; byte fallback needs them plus 259 pieces


def run_demo(root: str = "data/demo") -> str:
    from corpus.jsonl import read_documents
    from crawler.mirror import MirrorServer
    from crawler.runner import CrawlConfig, crawl_in_subprocess

    if not MIRROR.is_dir():
        raise SystemExit(f"error: the bundled mirror is missing at {MIRROR}; restore examples/ from git")
    with MirrorServer(str(MIRROR)) as server:
        cfg = CrawlConfig(source="aozora", root=root, crawl_id="demo", polite=False, progress_interval=2,
                          start_urls=[server.url(f"/index_pages/person{a}.html") for a in AUTHORS],
                          state_dir=str(Path(root) / "_state" / "crawl-demo"))
        # The server's port changes between runs, so the demo always crawls afresh (a few seconds).
        storage.delete(cfg.out_uri)
        storage.delete(cfg.state_path)
        print(f"[1/{STAGES}] crawl: serving {MIRROR.relative_to(Path.cwd()) if MIRROR.is_relative_to(Path.cwd()) else MIRROR} "
              f"at {server.url('/')} and crawling it …", flush=True)
        out = crawl_in_subprocess(cfg, show_progress=True)
    manifest = storage.read_manifest(out)
    c = manifest["counts"]
    print(f"\ncrawl: {c['documents']} documents, {c['characters']:,} characters, "
          f"{c['pages_fetched']} pages fetched")
    print("  dropped: " + ", ".join(f"{k} {v}" for k, v in c["drops"].items()))
    print(f"  documents: {out}/part-*.jsonl.gz   manifest: {out}/_MANIFEST.json")
    for doc in sorted(read_documents(out), key=lambda d: d.meta["work_id"])[:3]:
        first = next((ln.strip() for ln in doc.text.splitlines() if len(ln.strip()) >= 10), "")[:40]
        print(f"  · {doc.title} / {doc.author} ({len(doc.text):,} chars, {doc.meta['edition']}): {first}…")
    clean_uri = run_clean_stage(root, out)
    tok_uri = run_tokenizer_stage(root, clean_uri)
    shards_uri = run_shards_stage(root, clean_uri, tok_uri)
    run_uri = run_train_stage(root, shards_uri)
    run_eval_stage(run_uri, clean_uri)
    run_generate_stage(run_uri)
    run_export_stage(root, run_uri)
    print("\nEvery stage ran. Next: the same commands on a real corpus (README.md, 'A tour').")
    return run_uri


def run_tokenizer_stage(root: str, clean_uri: str) -> str:
    from tokenization.train import cli_train

    out = storage.join(root, "tokenizers", f"sp-unigram-{DEMO_VOCAB}")
    print(f"\n[3/{STAGES}] tokenizer: sentencepiece unigram, vocab {DEMO_VOCAB:,}, byte fallback …", flush=True)
    cli_train(clean_uri, "sentencepiece", DEMO_VOCAB, out)
    return out


def run_shards_stage(root: str, clean_uri: str, tok_uri: str) -> str:
    from tokenization.shards import ShardsConfig, summary, write_shards

    out = storage.join(root, "datasets", "aozora-demo", f"sp{DEMO_VOCAB}-{DEMO_SEQ_LEN}")
    print(f"\n[4/{STAGES}] shards: encode, pack into {DEMO_SEQ_LEN + 1}-token examples, GZIP TFRecords …", flush=True)
    # one process: the slice is small and a worker would spend longer importing TensorFlow
    cfg = ShardsConfig(seq_len=DEMO_SEQ_LEN, num_shards={"train": 8, "validation": 2}, workers=1)
    write_shards(clean_uri, tok_uri, out, cfg)
    print(summary(storage.read_manifest(out)))
    return out


def run_train_stage(root: str, shards_uri: str) -> str:
    from model.train import TrainConfig, train

    run = storage.join(root, "runs", "tiny-demo")
    storage.delete(run)  # the shards are new at every demo run (fresh crawl), so is the run
    print(f"\n[5/{STAGES}] train: GPT-2 preset tiny on CPU, {DEMO_TRAIN['steps']} steps …", flush=True)
    train(TrainConfig(data=shards_uri, run=run, **DEMO_TRAIN), progress=lambda line: print("  " + line, flush=True))
    return run


def run_eval_stage(run_uri: str, clean_uri: str) -> dict:
    from model.evaluate import evaluate_run

    print(f"\n[6/{STAGES}] evaluate: bits per character on the validation split (sliding window) …", flush=True)
    result = evaluate_run(run_uri, [storage.join(clean_uri, "validation")])
    print(f"  {result['bits_per_character']:.3f} bits/character, {result['bits_per_byte']:.3f} bits/byte, "
          f"token perplexity {result['token_perplexity']:.1f} ({result['characters']:,} characters, "
          f"{result['tokens']:,} tokens) → {storage.join(run_uri, 'eval.json')}")
    return result


def run_generate_stage(run_uri: str) -> None:
    from model.generate import generate_run

    print(f"\n[7/{STAGES}] generate: temperature 1.0, top-k 40, top-p 0.9, 60 characters …", flush=True)
    for sample in generate_run(run_uri, list(DEMO_PROMPTS), max_chars=60, top_k=40, top_p=0.9, seed=0):
        text = (sample.prompt + sample.text).replace("\n", " ⏎ ")
        print(f"  · {text}")


def run_export_stage(root: str, run_uri: str) -> str:
    from model.export import export_hf

    out = storage.join(root, "export", "tiny-demo-hf")
    print(f"\n[8/{STAGES}] export: Hugging Face GPT2LMHeadModel, logits checked against transformers …", flush=True)
    export_hf(run_uri, out)
    print(f"  {out}: config.json, model.safetensors, generation_config.json, spm.model, gpt2ja_tokenizer/")
    return out


def run_clean_stage(root: str, raw_uri: str) -> str:
    from corpus.clean import CleanConfig, run_clean
    from corpus.split import SplitConfig

    out = storage.join(root, "clean", "aozora-demo")
    # 48 works are few: hold out one author (新美南吉) so validation is a whole unseen author
    cfg = CleanConfig(inputs=[raw_uri], out=out, split=SplitConfig(holdout_authors=["新美 南吉"]))
    print(f"\n[2/{STAGES}] clean: notation, NFKC, quality filters, dedup, split …", flush=True)
    run_clean(cfg)
    c = storage.read_manifest(out)["counts"]
    print(f"clean: {c['documents_in']} documents in → {c['splits']['train']['documents']} train + "
          f"{c['splits']['validation']['documents']} validation ({c['characters_out']:,} characters)")
    print("  dropped: " + (", ".join(f"{k} {v}" for k, v in c["drops"].items()) or "nothing"))
    print(f"  corpus: {out}/{{train,validation}}/part-*.jsonl.gz   report: {out}/report.md")
    return out

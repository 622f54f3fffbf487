"""Training: shards + a preset → a run directory with checkpoints that resume exactly.

One optimizer step reads one batch of ``batch_tokens`` tokens from the shards,
split into ``accumulation_steps`` micro-batches of ``micro_batch`` sequences
(summed over replicas); each replica sums the gradient of the summed NLL of its
micro-batches, the replicas' sums are all-reduced once, divided by the number of
scored targets in the whole batch (an exact masked mean however the batch is
split), clipped by their global norm and applied by AdamW (weight decay on
matmul kernels only; warmup then cosine decay: see :mod:`gpt2ja.model.optim`).

Exact resume: a checkpoint holds the model, AdamW's moments and step counter
(hence the learning-rate schedule), our step counter, every dropout layer's
random state and ``examples``, the run's position in the global training
order of :mod:`gpt2ja.model.data_order` (a pure function of the shards, the seed and
``shuffle_buffer``). A run started again with the same config continues from
the newest checkpoint and, with ``deterministic=True``, ends with the same
weights as a run that was never interrupted. The position does not depend on
the topology: a run checkpointed on 2 hosts resumes on 1 (or 1 on 2) at the
same example, every global batch is the same examples, and within an epoch
none is seen twice or skipped. Each host reads the global stream and keeps its
rows of every global batch; each replica takes its rows of the host batch.

Backends (``backend``): ``tensorflow`` with a strategy, ``default`` (CPU or
one GPU), ``mirrored`` (all local GPUs), ``multi_worker`` (``TF_CONFIG``; one
process per host, the chief writes), ``tpu`` (``tpu`` names the TPU; data and
run on ``gs://``); or ``jax`` (:mod:`gpt2ja.model.trainer_jax`: every local device,
``jax.distributed`` across hosts, no TensorFlow needed). Both write the same
checkpoints (:mod:`gpt2ja.model.checkpoint`) and logs. The tests exercise
``default``, ``mirrored`` over two logical CPUs and ``multi_worker`` with two
worker processes on 127.0.0.1 (with resumes from 2 to 1 and 1 to 2 workers),
and JAX on one and two CPU devices and as two processes; GPUs and TPUs have
not been available here.

Run directory: written locally; a ``gs://`` run is staged in a local
directory and copied up as it trains (:class:`gpt2ja.model.run_sync.RunSync`): its
logs at every log step (TensorBoard and ``metrics.jsonl`` follow it before the
first checkpoint), each checkpoint's files once, its index after them (old
checkpoints are deleted remotely too); it is downloaded first when the run is
resumed. The chief trains as the build of the train stage
(:func:`gpt2ja.infra.stage.run_stage`): it holds the run's lock (a second ``train`` of
the same run gets :class:`gpt2ja.infra.stage.LockHeld`), and the run's
``_MANIFEST.json`` is written last, once every file is in place; the other
hosts of a multi-worker job neither lock nor write a manifest.

Code: this module holds the config and :func:`train` (inputs checked and the
fingerprint computed before any backend starts, then the session under the
train stage); :mod:`gpt2ja.model.trainer` (TensorFlow) and :mod:`gpt2ja.model.trainer_jax`
hold the parts it runs: ``start_runtime`` (strategy or devices),
``build_session`` (model, optimizer, data, resume), ``make_steps`` (the
compiled steps and checkpoints), and the backend-neutral ``run_loop`` of
:mod:`gpt2ja.model.trainer` (logging, evaluation, checkpoints, then the manifest).

Example::

    cfg = TrainConfig(data="data/shards/sp32k-1024", run="data/runs/r1", preset="small",
                      batch_tokens=524_288, micro_batch=16, steps=20_000, learning_rate=6e-4)
    train(cfg)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from gpt2ja.infra import stage, storage
from gpt2ja.model import runs
from gpt2ja.model.presets import ModelConfig, ModelError, host_memory_bytes, param_count, training_memory_bytes
from gpt2ja.model.train_config import GUARDED, STAGE, Plan, TrainConfig, TrainError, TrainPaused, changed_settings

#: the config and errors live in gpt2ja.model.train_config, which the trainers and gpt2ja.model.runs import too
__all__ = ["STAGE", "GUARDED", "Plan", "TrainConfig", "TrainError", "TrainPaused", "changed_settings", "train"]

log = logging.getLogger("gpt2ja.train")


def train(
    cfg: TrainConfig,
    *,
    progress: Callable[[str], None] | None = print,
    on_log: Callable[[int, dict], None] | None = None,
) -> str:
    """Train (or resume) the run ``cfg.run``; returns its URI once ``cfg.steps`` are done.

    ``progress`` receives the human progress lines (default: print); ``on_log``
    receives ``(step, metrics)`` at every log step (a flow reports progress
    with it). A run whose manifest matches this config and verifies is not
    trained again. Another process training the same run: :class:`gpt2ja.infra.stage.LockHeld`.
    """
    say = progress or (lambda line: None)
    plan = _plan(cfg)  # inputs, checked before anything heavy

    def nothing_to_do() -> str:
        say(f"run {cfg.run} is complete ({cfg.steps} steps, fingerprint {plan.fp[:12]}): nothing to do")
        return cfg.run

    if not stage.verify(cfg.run, plan.fp)[1]:  # finished: said before TensorFlow starts (checked again under the lock)
        return nothing_to_do()
    # before the train stage takes the run over (and withdraws a finished run's manifest): a run of
    # other shards or another model is refused untouched
    _check_resumable(cfg.run, cfg.data, plan.manifest, plan.model_cfg, cfg)

    from gpt2ja.model import trainer

    impl = trainer
    if cfg.backend == "jax":
        from gpt2ja.model import trainer_jax as impl
    rt = impl.start_runtime(cfg)
    _check_memory(plan.model_cfg, rt, cfg)

    finished: dict = {}

    def session() -> dict | None:
        """Train this host's part from the newest checkpoint to ``cfg.steps``; the chief returns the manifest."""
        s = impl.build_session(cfg, rt, plan, say)
        built = trainer.run_loop(cfg, rt, plan, s, impl.make_steps(cfg, rt, plan, s), say=say, on_log=on_log)
        finished["checkpoint"] = runs.latest_checkpoint(s.local)
        return built

    try:
        if not rt.chief:  # another host of a multi-worker job: the chief holds the run's lock and writes its manifest
            session()
            return cfg.run
        outcome = stage.run_stage(
            STAGE,
            cfg.run,
            fingerprint=plan.fp,
            build=session,
            inputs=[cfg.data, plan.tok_uri],
            prune=False,
            log=progress,
        )
    except TrainPaused as paused:
        say(str(paused))
        return cfg.run
    if outcome.skipped:  # another process finished it while this one started
        return nothing_to_do()
    say(f"run {cfg.run}: {cfg.steps:,} steps done, newest checkpoint {finished['checkpoint']}")
    return cfg.run


# ----------------------------------------------------------------- helpers


def _plan(cfg: TrainConfig) -> Plan:
    """Read and check the shards and their tokenizer, choose the model, compute the run's fingerprint."""
    from gpt2ja.model import data as data_mod
    from gpt2ja.tokenization.tokenizer import Tokenizer, TokenizerError

    try:
        manifest = data_mod.read_manifest_checked(cfg.data)
        tok_ref = (manifest.get("tokenizer") or {}).get("uri")  # relative to the shards since refs: relative
        tok_uri = cfg.tokenizer or (stage.input_uri(manifest, tok_ref) if tok_ref else None)
        if cfg.init_from and not cfg.tokenizer:
            tok_uri = storage.join(cfg.init_from, runs.TOKENIZER_DIR)
        if not tok_uri:
            raise TrainError(f"shards {cfg.data} do not name their tokenizer; pass tokenizer=...")
        tok = Tokenizer.load(tok_uri)
        data_mod.read_manifest_checked(cfg.data, tok)
    except (data_mod.DataError, TokenizerError, storage.StorageError) as err:
        raise TrainError(str(err)) from None
    seq_len = manifest["seq_len"]
    accum = cfg.accumulation_steps(seq_len)

    model_cfg, init_prefix = _model_config(cfg, tok.vocab_size, seq_len)
    input_manifests = [manifest, storage.read_manifest(tok_uri) or {}]
    fp = storage.fingerprint({"train": cfg.fingerprint_config(), "model": model_cfg.model_dump()}, input_manifests)
    return Plan(
        manifest=manifest,
        tok=tok,
        tok_uri=tok_uri,
        seq_len=seq_len,
        accum=accum,
        model_cfg=model_cfg,
        init_prefix=init_prefix,
        input_manifests=input_manifests,
        fp=fp,
    )


def _model_config(cfg: TrainConfig, vocab_size: int, seq_len: int) -> tuple[ModelConfig, str | None]:
    """The model to train and, with init_from, the checkpoint to start from."""
    if not cfg.init_from:
        try:
            return ModelConfig.from_preset(
                cfg.preset, vocab_size=vocab_size, context_length=seq_len, dropout=cfg.dropout
            ), None
        except ModelError as err:
            raise TrainError(str(err)) from None
    hparams = runs.read_hparams(cfg.init_from)
    base = runs.model_config(hparams, run_uri=f"init_from {cfg.init_from}")
    if cfg.preset and base.preset != cfg.preset:
        raise TrainError(
            f"init_from {cfg.init_from} is a {base.preset} model, not {cfg.preset}; drop preset "
            "or choose a run of that preset"
        )
    if base.vocab_size != vocab_size:
        raise TrainError(
            f"init_from {cfg.init_from} has a {base.vocab_size}-id vocabulary but the shards "
            f"{cfg.data} use {vocab_size}; build the shards with that run's tokenizer"
        )
    if seq_len > base.context_length:
        raise TrainError(
            f"shards {cfg.data} have seq_len {seq_len}, longer than the {base.context_length} "
            f"positions of init_from {cfg.init_from}; rebuild the shards with seq_len ≤ "
            f"{base.context_length}"
        )
    if cfg.dropout is not None:
        base = base.model_copy(update={"dropout": cfg.dropout})
    prefix = runs.latest_checkpoint(runs.fetch(cfg.init_from))
    if prefix is None:
        raise TrainError(f"init_from {cfg.init_from}: no checkpoint to start from; train that run first")
    return base, prefix


def _check_memory(model_cfg: ModelConfig, rt, cfg: TrainConfig) -> None:
    """Stop before building a model that cannot fit in this host's memory (CPU training only)."""
    if rt.accelerated:
        return  # accelerator memory is checked by the runtime; we cannot ask it cheaply before allocating
    need = training_memory_bytes(model_cfg, rt.per_replica, mixed_precision=cfg.mixed_precision != "off")
    have = host_memory_bytes()
    if have and need > have:
        raise TrainError(
            f"preset {model_cfg.preset} with micro_batch {cfg.micro_batch} needs about "
            f"{need / 2**30:.1f} GiB to train ({param_count(model_cfg):,} parameters), this machine "
            f"has {have / 2**30:.1f} GiB; use a smaller preset or micro_batch (with more "
            "accumulation steps)"
        )


def _check_resumable(run_uri: str, data_uri: str, manifest: dict, model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """Refuse to resume a run started on other shards, with another model or other optimisation settings.

    One read of its hparams; ``cfg.override`` lets other settings through (they are recorded when it resumes).
    """
    try:
        hparams = json.loads(storage.read_text(storage.join(run_uri, runs.HPARAMS)))
    except storage.StorageError:
        return  # a new run
    except ValueError:
        raise TrainError(
            f"run {run_uri}: {runs.HPARAMS} is not valid JSON; the run is damaged: delete it or choose another run URI"
        ) from None
    had = (hparams.get("data") or {}).get("fingerprint")
    if had and had != manifest.get("fingerprint"):
        raise TrainError(
            f"run {run_uri} was trained on other shards (fingerprint {had[:12]}, now "
            f"{str(manifest.get('fingerprint'))[:12]} at {data_uri}); choose another run URI, or "
            f"delete {run_uri} to train it again from scratch"
        )
    old = hparams.get("model")
    if old != model_cfg.model_dump():
        raise TrainError(
            f"run {run_uri} was started with another model ({old}); resume it with the same "
            "preset, data and dropout, or choose a new run URI"
        )
    changed = changed_settings(hparams.get("train") or {}, cfg)
    if changed and not cfg.override:
        said = ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items())
        raise TrainError(
            f"run {run_uri} was trained with other settings ({said}); resume it with the same ones, "
            "or pass --override to go on with the new ones (the change is recorded in the run's "
            f"{runs.HPARAMS} history)"
        )

"""Export a run to the Hugging Face ``transformers`` layout (``GPT2LMHeadModel``), verified before publishing.

::

    export_hf("data/runs/demo", "data/export/demo")        # or gs://bucket/export/demo

    {out}/
        config.json               GPT2Config: n_embd, n_layer, n_head, n_inner, n_positions,
                                  vocab_size = the padded size, activation "gelu_new", eps 1e-5
        model.safetensors         float32 weights under HF names (transformer.wte, …, transformer.ln_f)
        generation_config.json    bos = eos = pad = our eos_id; padding ids ≥ vocab_size suppressed;
                                  sampling = gpt2ja generate's defaults, max_new_tokens = context / 2
        tokenizer.json, tokenizer_config.json   AutoTokenizer (fast; "<|endoftext|>" first, pads on the
                                  left, model_max_length = context), checked against ours
        spm.model                 (sentencepiece kinds) the tokenizer's model, as-is
        gpt2ja_tokenizer/         a full copy of our tokenizer artifact (Tokenizer.load reads it)
        README.md                 the model card (model_card.py): Hub metadata (licence from the corpus's documents),
                                  use, sampling, evaluation (eval.json, baselines), training, limits
        _MANIFEST.json            written last: fingerprint (the run's manifest + format + eval), files,
                                  logit check

    push_to_hub("data/export/demo", "you/gpt2ja-demo")   # HfApi.create_repo + upload_folder

Weight mapping. KerasHub's GPT-2 is OpenAI's GPT-2 with the same maths:
pre-LayerNorm blocks (eps 1e-5), tanh-approximated GELU (``gelu_approximate``,
HF ``gelu_new``), attention scaled by 1/√head_dim, a final LayerNorm and the
LM head tied to the token embedding. Only the layout differs: KerasHub's
query/key/value kernels are ``(hidden, heads, head_dim)`` and the output
kernel ``(heads, head_dim, hidden)``; HF's ``Conv1D`` keeps ``(in, out)``
matrices with q|k|v concatenated along ``out`` in ``c_attn``. Dense kernels
are already ``(in, out)``, so the MLP maps as-is.

Padding ids. The embedding has ``padded_vocab_size`` rows (a multiple of 64);
the exported model has them too, so its logits have the padded width exactly
like :func:`gpt2ja.model.gpt2.logits`. Neither masks them in the raw logits; the
generation config lists them in ``suppress_tokens`` so ``generate`` never picks
them (as :mod:`gpt2ja.model.generate` masks them to -inf).

Tokenizer. ``tokenizer.json`` + ``tokenizer_config.json`` are a fast tokenizer
built from ours by :mod:`gpt2ja.model.hf_tokenizer` (bytes and unigram sentencepiece
kinds) and loaded back with ``AutoTokenizer`` before publishing: any text of
its check set that gets other ids is an :class:`ExportError`. The export also
carries ``spm.model`` and our own artifact; README.md names the two inputs
that differ on purpose.

Verification: the staged directory is loaded with
``GPT2LMHeadModel.from_pretrained(dir, local_files_only=True)`` and its logits
on a fixed batch of ids are compared with ours; a difference ≥ 1e-4 is an
:class:`ExportError` and nothing is published. Ours are the run's logits on
the process's Keras backend (:mod:`gpt2ja.model.backend`): on a machine with JAX and
PyTorch but no TensorFlow the export and its check run on JAX.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gpt2ja.infra import stage, storage
from gpt2ja.model.export_common import TOKENIZER_COPY, ExportError, generation_config

ACTIVATION = "gelu_new"  # KerasHub's GPT2Backbone uses keras_utils.gelu_approximate (tanh form)
LAYER_NORM_EPS = 1e-5  # KerasHub's GPT2Backbone: TransformerDecoder(layer_norm_epsilon=1e-05), final LN 1e-05
TOLERANCE = 1e-4  # max abs logit difference (float32) accepted by the verification
WEIGHTS_FILE = "model.safetensors"
STAGE = "export"
STAGE_VERSION = 2  # bump when the exported files change for the same run


class ExportConfig(BaseModel):
    """The export stage's settings (``gpt2ja export hf``, the pipeline's ``export:`` section).

    Example::

        ExportConfig(run="data/runs/tiny", out="data/export/tiny", push_to_hub="me/gpt2ja-tiny")
    """

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="a run directory")
    out: str = Field(description="where the Hugging Face model goes (local or gs://)")
    format: Literal["hf"] = Field(
        "hf", description="hf: a transformers GPT2LMHeadModel with safetensors weights, verified by comparing logits"
    )
    push_to_hub: str | None = Field(
        None,
        description="then upload it to this Hub model repo (owner/name), created if missing; "
        "token from HF_TOKEN, endpoint from HF_ENDPOINT",
    )
    private: bool = Field(False, description="create the Hub repo private (with push_to_hub)")
    backend: str | None = Field(
        None, description="tensorflow or jax (default: KERAS_BACKEND, else tensorflow where it is installed, else jax)"
    )


def hf_config(cfg, eos_id: int) -> dict:
    """The ``config.json`` of a ``GPT2LMHeadModel`` with the shape of ``cfg`` (a ModelConfig)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.padded_vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.hidden_dim,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_dim,
        "activation_function": ACTIVATION,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        # no pad_token_id here (as OpenAI's GPT-2 config): pad = eos would make GPT2Model warn about padding at
        # every prompt, which starts with the document-start eos; generation_config.json has pad = eos
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "gpt2ja_vocab_size": cfg.vocab_size,  # ids ≥ this are padding rows, never produced by the tokenizer
    }


def hf_state_dict(backbone) -> dict[str, np.ndarray]:
    """KerasHub ``GPT2Backbone`` weights → ``{HF GPT2LMHeadModel name: float32 array}`` (lm_head is tied)."""

    def arr(v) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float32))

    hidden = backbone.hidden_dim
    out = {
        "transformer.wte.weight": arr(backbone.token_embedding.embeddings),
        "transformer.wpe.weight": arr(backbone.position_embedding.position_embeddings),
        "transformer.ln_f.weight": arr(backbone.layer_norm.gamma),
        "transformer.ln_f.bias": arr(backbone.layer_norm.beta),
    }
    for i, layer in enumerate(backbone.transformer_layers):
        p = f"transformer.h.{i}."
        att = layer._self_attention_layer
        q, k, v = att._query_dense, att._key_dense, att._value_dense
        out[p + "attn.c_attn.weight"] = np.concatenate(
            [arr(d.kernel).reshape(hidden, hidden) for d in (q, k, v)], axis=1
        )  # (H, 3H)
        out[p + "attn.c_attn.bias"] = np.concatenate([arr(d.bias).reshape(hidden) for d in (q, k, v)])
        out[p + "attn.c_proj.weight"] = arr(att._output_dense.kernel).reshape(hidden, hidden)  # (heads·hd, H)
        out[p + "attn.c_proj.bias"] = arr(att._output_dense.bias)
        out[p + "ln_1.weight"] = arr(layer._self_attention_layer_norm.gamma)
        out[p + "ln_1.bias"] = arr(layer._self_attention_layer_norm.beta)
        out[p + "ln_2.weight"] = arr(layer._feedforward_layer_norm.gamma)
        out[p + "ln_2.bias"] = arr(layer._feedforward_layer_norm.beta)
        out[p + "mlp.c_fc.weight"] = arr(layer._feedforward_intermediate_dense.kernel)  # (H, I)
        out[p + "mlp.c_fc.bias"] = arr(layer._feedforward_intermediate_dense.bias)
        out[p + "mlp.c_proj.weight"] = arr(layer._feedforward_output_dense.kernel)  # (I, H)
        out[p + "mlp.c_proj.bias"] = arr(layer._feedforward_output_dense.bias)
    return {name: np.ascontiguousarray(a) for name, a in out.items()}


def verification_ids(cfg, batch: int = 2, length: int = 16) -> np.ndarray:
    """A fixed ``(batch, T)`` batch of real (non-padding) ids used to compare logits."""
    rng = np.random.default_rng(1234)
    return rng.integers(0, cfg.vocab_size, size=(batch, min(length, cfg.context_length)), dtype=np.int64)


def load_hf(export_dir: str):
    """``GPT2LMHeadModel`` from a local export directory (no network), float32, eval mode."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(export_dir, local_files_only=True, dtype=torch.float32)
    return model.eval()


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids, dtype=np.int64))).logits.float().numpy()


def max_logit_diff(run, export_dir: str, ids: np.ndarray | None = None) -> float:
    """Max abs difference between the run's logits and the exported model's on ``ids``."""
    from keras import ops

    from gpt2ja.model import gpt2

    ids = verification_ids(run.config) if ids is None else np.asarray(ids)
    ours = ops.convert_to_numpy(gpt2.logits(run.model, ids.astype(np.int32)))  # on this process's backend
    theirs = hf_logits(load_hf(export_dir), ids)
    if ours.shape != theirs.shape:
        return float("inf")
    return float(np.max(np.abs(ours - theirs)))


def _write_hf_tokenizer(tok, context_length: int, out_dir: str, run_uri: str) -> str | None:
    """``tokenizer.json`` + config for ``AutoTokenizer``, verified; the reason when the kind has none."""
    from transformers import AutoTokenizer

    from gpt2ja.model import hf_tokenizer

    try:
        hf_tokenizer.save(hf_tokenizer.build(tok, context_length), out_dir)
    except hf_tokenizer.HFTokenizerError as err:
        return str(err)
    # a long model_max_length: the check texts may be longer than a small context (it would only warn)
    loaded = AutoTokenizer.from_pretrained(out_dir, local_files_only=True, model_max_length=1 << 30)
    bad = hf_tokenizer.mismatches(tok, loaded)
    if bad:
        raise ExportError(
            f"export of {run_uri}: the transformers tokenizer gives other ids than ours on "
            f"{len(bad)} check text(s), first {bad[0][:40]!r}; nothing was published"
        )
    return None


def export_hf(run_uri: str, out_uri: str) -> str:
    """Export the newest checkpoint of ``run_uri`` to ``out_uri`` (local dir or ``gs://``); returns ``out_uri``.

    The export stage, built through :func:`gpt2ja.infra.stage.run_stage` (under
    ``out_uri``'s lock; another writer gets :class:`gpt2ja.infra.stage.LockHeld`):
    staged in a local temp dir, verified against the run (logits on a fixed
    batch), then its files published with :func:`gpt2ja.infra.storage.upload_dir` and
    ``_MANIFEST.json`` (fingerprint of the run's manifest and the export format)
    written last. An export whose manifest matches and verifies is not redone.
    A run that cannot be loaded is the ModelError of :func:`gpt2ja.model.runs.load_run`;
    an export that does not match is an :class:`ExportError`.
    """
    from gpt2ja.model.model_card import corpus_licenses, model_card, read_eval

    started = time.monotonic()
    if out_uri.rstrip("/") == run_uri.rstrip("/"):
        raise ExportError(
            f"export of {run_uri}: give it a directory of its own (e.g. {run_uri}/export/hf), not the run itself"
        )
    evaluation = read_eval(run_uri)  # its figures go into the model card: a new evaluation redoes the export
    from gpt2ja.model.generate import DEFAULT_SAMPLING

    config = {
        "format": "hf",
        "version": STAGE_VERSION,
        "eval_sha256": hashlib.sha256(json.dumps(evaluation, sort_keys=True).encode()).hexdigest()
        if evaluation
        else None,
        "sampling": dict(DEFAULT_SAMPLING),
    }  # generation_config.json's: new defaults redo the export
    try:
        run_manifest = storage.read_manifest(run_uri)
        if run_manifest is not None and not stage.verify(out_uri, storage.fingerprint(config, [run_manifest]))[1]:
            return out_uri  # up to date: this run, this format (checked again under the lock)
    except storage.StorageError as err:
        raise ExportError(f"export of {run_uri}: {err}") from None
    try:
        import safetensors.numpy
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"export of {run_uri}: {err.name} is not installed; pip install torch transformers safetensors"
        ) from None
    from gpt2ja.model.runs import TOKENIZER_DIR, load_run

    loaded = []
    if run_manifest is not None:
        source = run_manifest
    else:  # an unfinished run (no manifest yet) is identified by its hparams and newest checkpoint
        loaded.append(load_run(run_uri, dtype="float32"))
        source = {
            "uri": run_uri,
            "fingerprint": hashlib.sha256(
                json.dumps([loaded[0].hparams, os.path.basename(loaded[0].checkpoint)], sort_keys=True).encode()
            ).hexdigest(),
        }
    fp = storage.fingerprint(config, [source])

    def build() -> dict:
        run = loaded[0] if loaded else load_run(run_uri, dtype="float32")
        cfg, tok = run.config, run.tokenizer
        with tempfile.TemporaryDirectory(prefix=f"gpt2ja-export-{os.getpid()}-") as tmp:

            def write_json(name: str, value: dict) -> None:
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    json.dump(value, f, indent=2, ensure_ascii=False)
                    f.write("\n")

            write_json("config.json", hf_config(cfg, tok.eos_id))
            write_json("generation_config.json", generation_config(cfg, tok.eos_id))
            # one metadata key: safetensors keeps metadata in a hash map whose order changes from run to run,
            # and the same run must export to the same bytes (which run and step: the export's manifest)
            safetensors.numpy.save_file(
                hf_state_dict(run.model.backbone), os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"}
            )
            copy = os.path.join(tmp, TOKENIZER_COPY)
            # the run's own tokenizer artifact, byte for byte (its manifest included): re-saving it would stamp
            # a new creation time, and the same run must export to the same bytes
            storage.download_dir(storage.join(run_uri, TOKENIZER_DIR), copy)
            if os.path.exists(os.path.join(copy, "spm.model")):
                shutil.copyfile(os.path.join(copy, "spm.model"), os.path.join(tmp, "spm.model"))
            hf_refused = _write_hf_tokenizer(tok, cfg.context_length, tmp, run_uri)
            licences, sources, _ = corpus_licenses(run_uri, run.hparams)
            with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
                f.write(
                    model_card(
                        run, hf_refused, licences, sources, evaluation, os.path.exists(os.path.join(tmp, "spm.model"))
                    )
                )

            try:
                diff = max_logit_diff(run, tmp)
            except Exception as err:  # noqa: BLE001 - any loader failure is one line
                first = " ".join(str(err).split())[:200]
                raise ExportError(
                    f"export of {run_uri}: transformers cannot load the exported model "
                    f"({type(err).__name__}: {first}); nothing was published"
                ) from None
            if not diff < TOLERANCE:
                raise ExportError(
                    f"export of {run_uri}: transformers logits differ from the run's by {diff:.3g} "
                    f"(limit {TOLERANCE:g}); the weight mapping is wrong, nothing was published"
                )
            files = [storage.file_info(p, root=tmp) for p in storage.list_files(tmp)]
            try:
                _publish_files(tmp, out_uri, {f["path"] for f in files})
            except storage.StorageError as err:
                raise ExportError(f"export of {run_uri}: {err}") from None
        return storage.build_manifest(
            stage=STAGE,
            config=config,
            inputs=[source],
            files=files,
            counts={"parameters": int(run.model.count_params()), "step": run.step, "vocab_size": cfg.vocab_size},
            timings={"seconds": round(time.monotonic() - started, 3)},
            extra={"max_logit_diff": diff, "tolerance": TOLERANCE, "checkpoint": os.path.basename(run.checkpoint)},
        )

    # prune=False: ``out_uri`` may be any folder; _publish_files removes what an earlier export left
    stage.run_stage(STAGE, out_uri, fingerprint=fp, build=build, inputs=[run_uri], prune=False)
    return out_uri


#: the files of an export's top level that only some exports have (by tokenizer kind)
_OPTIONAL_FILES = ("spm.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _publish_files(staged: str, out_uri: str, paths: set[str]) -> None:
    """Upload the staged export (no manifest: the export stage writes it last) over what ``out_uri`` held.

    Files an earlier export of another tokenizer kind left there (an AutoTokenizer
    over a sentencepiece BPE export, an old tokenizer copy) are removed first.
    """
    for name in _OPTIONAL_FILES:
        if name not in paths:
            storage.delete(storage.join(out_uri, name))
    storage.delete(storage.join(out_uri, TOKENIZER_COPY))
    storage.upload_dir(staged, out_uri)


def push_to_hub(
    export_uri: str, repo_id: str, *, private: bool = False, endpoint: str | None = None, token: str | None = None
) -> str:
    """Upload a finished export (not its ``_MANIFEST.json``) to the Hub model repo ``repo_id``; the commit URL.

    ``huggingface_hub``'s ``HfApi.create_repo`` (``exist_ok``) then ``upload_folder``
    (one commit). The endpoint is ``endpoint``, else ``HF_ENDPOINT`` (read now, not
    when huggingface_hub was imported), else huggingface.co; the token is ``token``,
    else ``HF_TOKEN``, else huggingface_hub's own login. A ``gs://`` export is
    downloaded to a temp dir first. Errors are one ExportError line.

    Example::

        push_to_hub("data/export/small-sp16k-hf", "you/gpt2ja-small")   # HF_TOKEN=hf_… in the environment
    """
    from huggingface_hub import HfApi

    manifest = storage.read_manifest(export_uri)
    if manifest is None or manifest.get("stage") != STAGE:
        raise ExportError(
            f"push of {export_uri}: not a finished export (no export _MANIFEST.json); run `gpt2ja export hf` first"
        )
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token or os.environ.get("HF_TOKEN") or None)
    with tempfile.TemporaryDirectory(prefix="gpt2ja-push-") as tmp:
        local = storage.local_path(export_uri)
        if local is None:
            storage.download_dir(export_uri, tmp)
            local = tmp
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=local,
                commit_message=f"gpt2ja export, step {manifest.get('counts', {}).get('step')}",
                ignore_patterns=[storage.MANIFEST, ".*.lock", "**/.*.lock"],
            )
        except Exception as err:  # noqa: BLE001 - HTTP, auth and connection errors alike are one line
            first = " ".join(str(err).split())[:300]
            raise ExportError(
                f"push of {export_uri} to {repo_id} at {endpoint or 'huggingface.co'}: "
                f"{type(err).__name__}: {first}; check HF_TOKEN (a write token) and the repo "
                "name"
            ) from None
    return str(getattr(info, "commit_url", info))

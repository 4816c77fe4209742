"""`nmt export`: a Transformer checkpoint as a CTranslate2 model folder, for fast CPU decoding.

The folder holds CTranslate2's `model.bin`, `config.json` and vocabularies (SentencePiece piece
i is token i, so ids map one to one), the SentencePiece models (`src.spm.model`,
`tgt.spm.model`) and `nmt_export.json`: the checkpoint's config (languages, cleaning, search
settings) and step, which `translate.engine=ctranslate2` (`nmt.ct2_engine`) reads back.
CTranslate2 is an optional dependency (`pip install nmt[ctranslate2]`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmt.errors import UserError
from nmt.translator import Translator, describe_search, resolve_decode

try:
    import ctranslate2
    from ctranslate2.specs import TransformerSpec
except ImportError:  # an optional extra: only `nmt export` and its engine need it
    ctranslate2 = None

log = logging.getLogger(__name__)

METADATA_NAME = "nmt_export.json"
SRC_SPM_NAME, TGT_SPM_NAME = "src.spm.model", "tgt.spm.model"
METADATA_FORMAT = 1
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's, which nmt's models use
# export.quantization -> CTranslate2's `quantization` argument, applied to the weights on save.
QUANTIZATIONS = {"none": None, "int8": "int8", "int8_float32": "int8_float32",
                 "float16": "float16"}  # fmt: skip


def require_ctranslate2(key: str) -> None:
    """A one-line error naming the setting that needs the optional package."""
    if ctranslate2 is None:
        raise UserError(f"{key} needs the ctranslate2 package: pip install nmt[ctranslate2]")


def export_checkpoint(
    ckpt: str | Path,
    output: str | Path,
    *,
    quantization: str,
    decode_overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write the CTranslate2 folder `output` for checkpoint `ckpt` (a file or run directory),
    its weights quantized as `quantization` (export.quantization); the search settings saved
    with it are the checkpoint's, with `decode_overrides` applied. Returns the folder.

    The folder is built beside `output` and renamed into place, so a failed export leaves
    nothing half-written; a previous export at `output` is replaced, any other folder refused.
    """
    require_ctranslate2("nmt export")
    target = Path(output)
    previous_export = (target / METADATA_NAME).is_file()
    if target.exists() and not previous_export and (not target.is_dir() or any(target.iterdir())):
        raise UserError(
            f"export.output={target} exists and is not an nmt export: choose a new folder"
        )
    translator = Translator.load(ckpt, device="cpu", precision="fp32")
    cfg = translator.ckpt_cfg
    if cfg.model.arch != "transformer":
        raise UserError(
            f"{translator.path} is a model.arch={cfg.model.arch} model: CTranslate2 has no "
            "RNN decoder, so only Transformer checkpoints can be exported"
        )
    decode, origins = resolve_decode(cfg.decode, decode_overrides or {})
    log.info("saved with the export: %s", describe_search(decode, origins))
    spec = transformer_spec(translator.model, cfg.model.norm_first)
    spec.register_source_vocabulary(translator.src_tokenizer.vocabulary())
    spec.register_target_vocabulary(translator.tgt_tokenizer.vocabulary())
    spec.validate()
    spec.optimize(quantization=QUANTIZATIONS[quantization])

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        spec.save(str(tmp))
        (tmp / SRC_SPM_NAME).write_bytes(translator.src_tokenizer.model_proto)
        (tmp / TGT_SPM_NAME).write_bytes(translator.tgt_tokenizer.model_proto)
        config = dataclasses.asdict(dataclasses.replace(cfg, decode=decode))
        metadata = {"format": METADATA_FORMAT, "checkpoint": str(translator.path),
                    "step": translator.step, "quantization": quantization,
                    "ctranslate2_version": ctranslate2.__version__, "config": config}  # fmt: skip
        (tmp / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    except OSError as error:
        raise UserError(f"cannot write export.output={target}: {error.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (step %d) to %s (weights: %s)", translator.path, translator.step,
             target, quantization)  # fmt: skip
    return target


def transformer_spec(model: nn.Module, norm_first: bool) -> TransformerSpec:
    """CTranslate2's description of nmt's `Transformer` (nmt.models.transformer), every weight
    set from the module itself (so the legacy key names its loader accepts do not matter).

    Both share the layout: embeddings scaled by √D, positions added, ReLU FFN, per-sublayer
    LayerNorm before the sublayer (pre-norm, with a final LayerNorm per stack) or after the
    residual sum (post-norm, none). Two things are written explicitly because CTranslate2's
    defaults differ: nmt's sinusoids interleave sin/cos (CTranslate2's table is [sin | cos]
    halves), and nmt's LayerNorm epsilon is 1e-5 (CTranslate2's 1e-6).
    """
    encoder, decoder = model.encoder, model.decoder
    spec = TransformerSpec.from_config(
        (len(encoder.layers), len(decoder.layers)),
        encoder.layers[0].self_attn.num_heads,
        pre_norm=norm_first,
    )
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    spec.encoder.embeddings[0].weight = _array(model.src_embed.weight)
    spec.decoder.embeddings.weight = _array(model.tgt_embed.weight)
    spec.encoder.position_encodings.encodings = _positions(encoder.positions)
    spec.decoder.position_encodings.encodings = _positions(decoder.positions)
    spec.decoder.projection.weight = _array(model.output.weight)  # no bias: nmt has none
    if norm_first:
        _set_norm(spec.encoder.layer_norm, encoder.norm)
        _set_norm(spec.decoder.layer_norm, decoder.norm)
    for layer_spec, layer in zip(spec.encoder.layer, encoder.layers, strict=True):
        _set_attention(layer_spec.self_attention, layer.self_attn, self_attention=True)
        _set_norm(layer_spec.self_attention.layer_norm, layer.residuals[0].norm)
        _set_ffn(layer_spec.ffn, layer.ffn, layer.residuals[1].norm)
    for layer_spec, layer in zip(spec.decoder.layer, decoder.layers, strict=True):
        _set_attention(layer_spec.self_attention, layer.self_attn, self_attention=True)
        _set_norm(layer_spec.self_attention.layer_norm, layer.residuals[0].norm)
        _set_attention(layer_spec.attention, layer.cross_attn, self_attention=False)
        _set_norm(layer_spec.attention.layer_norm, layer.residuals[1].norm)
        _set_ffn(layer_spec.ffn, layer.ffn, layer.residuals[2].norm)
    return spec


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _positions(positions: nn.Module) -> np.ndarray:
    """The (max_positions, D) table nmt adds: its sinusoids, or learned position embeddings."""
    table = positions.sinusoids if positions.embedding is None else positions.embedding.weight
    return _array(table)


def _set_norm(spec: Any, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _set_linear(spec: Any, *linears: nn.Linear) -> None:
    """One CTranslate2 linear from one or more of nmt's, fused along the output dimension."""
    spec.weight = np.concatenate([_array(linear.weight) for linear in linears])
    spec.bias = np.concatenate([_array(linear.bias) for linear in linears])


def _set_attention(spec: Any, attn: nn.Module, *, self_attention: bool) -> None:
    """CTranslate2 fuses Q, K, V into one projection in self-attention, and K, V into one
    (beside Q) in cross-attention; the output projection comes last."""
    if self_attention:
        _set_linear(spec.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
    else:
        _set_linear(spec.linear[0], attn.q_proj)
        _set_linear(spec.linear[1], attn.k_proj, attn.v_proj)
    _set_linear(spec.linear[-1], attn.out_proj)


def _set_ffn(spec: Any, ffn: nn.Sequential, norm: nn.LayerNorm) -> None:
    """nmt's FFN is Sequential(Linear, ReLU, Linear)."""
    _set_linear(spec.linear_0, ffn[0])
    _set_linear(spec.linear_1, ffn[2])
    _set_norm(spec.layer_norm, norm)

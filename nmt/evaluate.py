"""Translate a prepared split and score it: loss, perplexity, sacreBLEU BLEU and chrF.

BLEU and chrF are always sacreBLEU on detokenized, cased output against the raw reference
lines (the split's `ref` column), reported with their signatures.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext

import datasets
import torch
import torch.nn.functional as F
from sacrebleu.metrics import BLEU, CHRF

from nmt.config import Config, DecodeConfig
from nmt.data import PreparedData
from nmt.data.batching import collate, iterate_batches, plan_batches
from nmt.models.base import Seq2Seq
from nmt.search import search
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@dataclasses.dataclass
class Scores:
    """Corpus BLEU and chrF with the sacreBLEU signatures that say how they were computed."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str


@dataclasses.dataclass
class ValidationResult(Scores):
    loss: float  # per target token, without label smoothing
    perplexity: float
    hypotheses: list[str]


def corpus_scores(hypotheses: list[str], references: list[str]) -> Scores:
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return Scores(
        bleu_score.score, chrf_score.score, str(bleu.get_signature()), str(chrf.get_signature())
    )


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for bf16/fp16; nothing for fp32."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


@torch.inference_mode()
def translate_split(
    model: Seq2Seq,
    split: datasets.Dataset,
    tokenizer: Tokenizer,
    cfg: DecodeConfig,
    device: torch.device,
    precision: torch.dtype = torch.float32,
    max_tokens: int = 8192,
) -> list[str]:
    """Detokenized translations of every row of `split`, in the split's order."""
    model.eval()
    src_lens = split["src_len"]
    # Search needs no target: plan on source lengths only, batches of similar length.
    batches = plan_batches(src_lens, [0] * len(src_lens), max_tokens, pad_multiple=1)
    outputs: list[str] = [""] * len(split)
    for indices in batches:
        rows = split[indices]
        batch = collate(rows["src_ids"], [[] for _ in indices], indices, pad_multiple=1)
        with autocast(device, precision):
            result = search(model, batch.src.to(device), batch.src_mask.to(device), cfg)
        for index, text in zip(indices, tokenizer.decode(result.tokens)):
            outputs[index] = text
    return outputs


@torch.inference_mode()
def split_loss(
    model: Seq2Seq,
    split: datasets.Dataset,
    device: torch.device,
    precision: torch.dtype = torch.float32,
    max_tokens: int = 8192,
) -> float:
    """Mean cross-entropy per target token (EOS included) under teacher forcing."""
    model.eval()
    total, num_tokens = 0.0, 0
    plan = plan_batches(split["src_len"], split["tgt_len"], max_tokens)
    for batch in iterate_batches(split, plan):
        batch = batch.to(device)
        with autocast(device, precision):
            logits = model(batch.src, batch.src_mask, batch.tgt_in).logits
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            batch.tgt_out.flatten(),
            ignore_index=PAD_ID,
            reduction="sum",
        )
        total += float(loss)
        num_tokens += batch.num_tgt_tokens
    return total / max(num_tokens, 1)


def validate(
    model: Seq2Seq, data: PreparedData, cfg: Config, device: torch.device, precision: torch.dtype
) -> ValidationResult:
    """Loss, perplexity, BLEU and chrF on the validation split (search: train.valid_beam_size)."""
    split = data.splits[cfg.data.valid_split]
    loss = split_loss(model, split, device, precision, 2 * cfg.train.max_tokens)
    decode = dataclasses.replace(cfg.decode, beam_size=cfg.train.valid_beam_size, nbest=1)
    hypotheses = translate_split(
        model, split, data.tgt_tokenizer, decode, device, precision, 2 * cfg.train.max_tokens
    )
    scores = corpus_scores(hypotheses, split["ref"])
    model.train()
    return ValidationResult(
        **dataclasses.asdict(scores),
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        hypotheses=hypotheses,
    )


@torch.inference_mode()
def attention_maps(
    model: Seq2Seq, src_ids: list[int], tgt_ids: list[int], device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Cross-attention per decoder layer, (N, T, S) each, of the model reading its own output.

    Teacher forcing on a hypothesis gives the same attention as the search that produced it
    (incremental and full decoding agree), with every layer and head at once. Rows are the
    target tokens plus EOS, columns the source tokens plus EOS.
    """
    model.eval()
    src = torch.tensor([[*src_ids, EOS_ID]], device=device)
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]], device=device)
    output = model(src, torch.ones_like(src, dtype=torch.bool), tgt_in, need_weights=True)
    model.train()
    return tuple(layer[0].float().cpu() for layer in output.layer_attn)

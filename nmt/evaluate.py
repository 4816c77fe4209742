"""What training needs to judge a model: the masked cross-entropy, loss and perplexity of a split,
sacreBLEU BLEU and chrF with their signatures, validation, and attention maps for heatmaps.

BLEU and chrF are always sacreBLEU on detokenized, cased output against the raw reference
lines (the split's `ref` column), reported with their signatures. The `nmt evaluate` command,
which starts from a checkpoint, is built on this in `nmt.translate`.
"""

from __future__ import annotations

import dataclasses
import math

import datasets
import torch
import torch.nn.functional as F
from sacrebleu.metrics import BLEU, CHRF
from torch import Tensor

from nmt.config import Config
from nmt.data import PreparedData
from nmt.data.batching import column, iterate_batches, length_array, plan_batches
from nmt.decoding import search_in_order
from nmt.device import autocast
from nmt.models.base import Seq2Seq
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID


@dataclasses.dataclass
class Scores:
    """Corpus BLEU and chrF with the sacreBLEU signatures that say how they were computed.

    `bleu_lc` is the same BLEU on lowercased text (`sacrebleu -lc`), for comparison with
    papers that lowercase; `bleu` (cased) is the number this toolkit reports.
    """

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_lc: float
    bleu_lc_signature: str


@dataclasses.dataclass
class ValidationResult(Scores):
    loss: float  # per target token, without label smoothing
    perplexity: float
    hypotheses: list[str]
    hypothesis_ids: list[list[int]]  # as the search found them (heatmaps read these, not a
    # re-encoding of the text, which may segment differently)


def corpus_scores(hypotheses: list[str], references: list[str]) -> Scores:
    """sacreBLEU corpus BLEU, chrF and lowercased BLEU of detokenized lines, one reference each."""
    bleu, chrf, bleu_lc = BLEU(), CHRF(), BLEU(lowercase=True)
    return Scores(
        bleu=bleu.corpus_score(hypotheses, [references]).score,
        chrf=chrf.corpus_score(hypotheses, [references]).score,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_lc=bleu_lc.corpus_score(hypotheses, [references]).score,
        bleu_lc_signature=str(bleu_lc.get_signature()),
    )


def cross_entropy_sum(logits: Tensor, tgt_out: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    """Summed cross-entropy of `logits` (B, T, V) against `tgt_out` (B, T), PAD positions ignored.

    The one loss of training (with label smoothing) and evaluation (without): a sum, so the
    caller divides by the real target tokens of however many batches it accumulates. Computed
    in fp32 whatever the autocast dtype. Returns a scalar tensor.
    """
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        tgt_out.flatten(),
        ignore_index=PAD_ID,
        label_smoothing=label_smoothing,
        reduction="sum",
    )


@torch.inference_mode()
def split_loss(
    model: Seq2Seq,
    split: datasets.Dataset,
    *,
    device: torch.device,
    precision: torch.dtype,
    max_tokens: int,
    pad_multiple: int,
) -> float:
    """Mean cross-entropy per target token (EOS included) under teacher forcing, in batches
    planned like training's (`max_tokens`, `pad_multiple`) but in a fixed, sorted order."""
    model.eval()
    total, num_tokens = 0.0, 0
    plan = plan_batches(
        length_array(split, "src_len"), length_array(split, "tgt_len"), max_tokens, pad_multiple
    )
    for batch in iterate_batches(split, plan, pad_multiple):
        batch = batch.to(device)
        with autocast(device, precision):
            logits = model(batch.src, batch.src_mask, batch.tgt_in).logits
        total += float(cross_entropy_sum(logits, batch.tgt_out))
        num_tokens += batch.num_tgt_tokens
    return total / max(num_tokens, 1)


def validate(
    model: Seq2Seq, data: PreparedData, cfg: Config, device: torch.device, precision: torch.dtype
) -> ValidationResult:
    """Loss, perplexity, BLEU and chrF on the validation split (search: train.valid_beam_size).

    Nothing is updated, so batches may be twice training's `train.max_tokens`.
    """
    split = data.splits[cfg.data.valid_split]
    if cfg.train.max_valid_sentences is not None:
        split = split.select(range(min(cfg.train.max_valid_sentences, len(split))))
    budget = {"device": device, "precision": precision, "max_tokens": 2 * cfg.train.max_tokens}
    loss = split_loss(model, split, **budget, pad_multiple=cfg.train.pad_multiple)
    # Validation BLEU always searches: a checkpoint saved with decode.sample keeps it for
    # inference only, so that best.pt is chosen by a number that does not depend on a draw.
    decode = dataclasses.replace(
        cfg.decode, beam_size=cfg.train.valid_beam_size, nbest=1, sample=False
    )
    found = search_in_order(model, column(split, "src_ids"), decode, **budget)
    hypothesis_ids = [nbest[0].tokens for nbest in found]
    hypotheses = data.tgt_tokenizer.decode(hypothesis_ids)
    scores = corpus_scores(hypotheses, column(split, "ref"))
    model.train()
    return ValidationResult(
        **dataclasses.asdict(scores),
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        hypotheses=hypotheses,
        hypothesis_ids=hypothesis_ids,
    )


@torch.inference_mode()
def attention_maps(
    model: Seq2Seq, src_ids: list[int], tgt_ids: list[int], device: torch.device
) -> tuple[Tensor, ...]:
    """Cross-attention per decoder layer, (N, T, S) each, of the model reading its own output.

    Teacher forcing on a hypothesis gives the same attention as the search that produced it
    (incremental and full decoding agree), with every layer and head at once. Rows are the
    target tokens plus EOS, columns the source tokens plus EOS.
    """
    model.eval()
    src = torch.tensor([[*src_ids, EOS_ID]], device=device)
    tgt_in = torch.tensor([[BOS_ID, *tgt_ids]], device=device)
    output = model(src, torch.ones_like(src, dtype=torch.bool), tgt_in, need_attention=True)
    model.train()
    return tuple(layer[0].float().cpu() for layer in output.layer_attn)

"""Translate a prepared split and score it: loss, perplexity, sacreBLEU BLEU and chrF.

BLEU and chrF are always sacreBLEU on detokenized, cased output against the raw reference
lines (the split's `ref` column), reported with their signatures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from sacrebleu.metrics import BLEU, CHRF

from nmt.config import Config, DecodeConfig, TranslateConfig
from nmt.data import PreparedData
from nmt.data.batching import column, iterate_batches, plan_batches
from nmt.device import autocast
from nmt.errors import UserError
from nmt.models.base import Seq2Seq
from nmt.tokenizer import Tokenizer
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


def corpus_scores(hypotheses: list[str], references: list[str]) -> Scores:
    bleu, chrf, bleu_lc = BLEU(), CHRF(), BLEU(lowercase=True)
    return Scores(
        bleu=bleu.corpus_score(hypotheses, [references]).score,
        chrf=chrf.corpus_score(hypotheses, [references]).score,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_lc=bleu_lc.corpus_score(hypotheses, [references]).score,
        bleu_lc_signature=str(bleu_lc.get_signature()),
    )


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
    from nmt.translate import search_in_order  # translate builds on this module's neighbours

    found = search_in_order(model, column(split, "src_ids"), cfg, device, precision, max_tokens)
    return tokenizer.decode([nbest[0].tokens for nbest in found])


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
    plan = plan_batches(column(split, "src_len"), column(split, "tgt_len"), max_tokens)
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
    if cfg.train.max_valid_sentences is not None:
        split = split.select(range(min(cfg.train.max_valid_sentences, len(split))))
    loss = split_loss(model, split, device, precision, 2 * cfg.train.max_tokens)
    decode = dataclasses.replace(cfg.decode, beam_size=cfg.train.valid_beam_size, nbest=1)
    hypotheses = translate_split(
        model, split, data.tgt_tokenizer, decode, device, precision, 2 * cfg.train.max_tokens
    )
    scores = corpus_scores(hypotheses, column(split, "ref"))
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
    output = model(src, torch.ones_like(src, dtype=torch.bool), tgt_in, need_attention=True)
    model.train()
    return tuple(layer[0].float().cpu() for layer in output.layer_attn)


def _read_text(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path} does not exist ({key})")
    return path.read_text(encoding="utf-8").split("\n")[:-1] if path.stat().st_size else []


def score_files(hypotheses: Path, references: Path) -> dict:
    """sacreBLEU of a hypothesis file against a reference file, as a `format_scores` row."""
    hyps = _read_text(hypotheses, "translate.hypotheses")
    refs = _read_text(references, "translate.references")
    if len(hyps) != len(refs):
        raise UserError(
            f"{hypotheses} has {len(hyps)} lines but {references} has {len(refs)}: "
            "a translation has one line per reference line"
        )
    scores = corpus_scores(hyps, refs)
    return {"split": hypotheses.name, "lines": len(hyps), **dataclasses.asdict(scores)}


def translate_and_score(
    translator, raw: datasets.Dataset, decode: DecodeConfig, settings: TranslateConfig
) -> tuple[list[str], Scores]:
    """Translate a raw split's `src` column with `translator` (an `nmt.translate.Translator`)
    and score the detokenized output against its raw `tgt` column."""
    results = translator.translate(
        column(raw, "src"), decode, settings.max_tokens, settings.chunk_lines
    )
    hypotheses = [translator.detokenize(nbest[0]) for _, nbest, _ in results]
    return hypotheses, corpus_scores(hypotheses, column(raw, "tgt"))


def evaluate_checkpoint(cfg: Config) -> dict:
    """Translate the checkpoint's validation and test splits (or `translate.splits`) and score
    them against the raw reference files; write the results as JSON next to the checkpoint,
    with each split's translations (`<stem>.<split>.<lang>`) so anyone can rescore them with
    the `sacrebleu` command."""
    from nmt.data.corpus import load_split
    from nmt.translate import Translator

    settings = cfg.translate
    if settings.ckpt is None:
        raise UserError("translate.ckpt is required: a checkpoint file or a run directory")
    translator = Translator.load(settings.ckpt, settings.device, settings.precision)
    data_cfg = translator.cfg.data
    if settings.data_root:
        data_cfg = dataclasses.replace(data_cfg, root=settings.data_root)
    ckpt = Path(settings.ckpt)
    stem = f"eval_{ckpt.stem}" if ckpt.is_file() else "eval_best"
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for split in settings.splits or [data_cfg.valid_split, *data_cfg.test_splits]:
            raw = load_split(data_cfg, split, Path(tmp))
            hypotheses, scores = translate_and_score(translator, raw, cfg.decode, settings)
            translations = folder / f"{stem}.{split}.{data_cfg.tgt_lang}"
            translations.write_text("".join(f"{line}\n" for line in hypotheses), encoding="utf-8")
            rows.append({"split": split, "lines": len(hypotheses), **dataclasses.asdict(scores),
                         "translations": str(translations)})  # fmt: skip
    out = folder / f"{stem}.json"
    record = {"checkpoint": str(ckpt), "decode": dataclasses.asdict(cfg.decode), "results": rows}
    out.write_text(json.dumps(record, indent=2))
    record["path"] = str(out)
    return record


def format_scores(rows: list[dict]) -> str:
    """A table of BLEU and chrF per split, with the sacreBLEU signatures under it."""
    lines = [f"{'split':<22} {'lines':>6} {'BLEU':>7} {'chrF':>7} {'BLEU-lc':>8}"]
    for row in rows:
        lines.append(
            f"{row['split']:<22} {row['lines']:>6} {row['bleu']:>7.2f} {row['chrf']:>7.2f} "
            f"{row['bleu_lc']:>8.2f}"
        )
    lines.append(f"BLEU signature: {rows[0]['bleu_signature']}")
    lines.append(f"chrF signature: {rows[0]['chrf_signature']}")
    lines.append(f"BLEU-lc signature: {rows[0]['bleu_lc_signature']}")
    lines.append(
        "(sacreBLEU on detokenized output against the raw references; BLEU and chrF cased, "
        "BLEU-lc lowercased as `sacrebleu -lc`, for comparison with papers only)"
    )
    return "\n".join(lines)

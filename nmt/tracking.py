"""TensorBoard logging of a training run: scalars, sample translations, attention heatmaps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from nmt import viz
from nmt.config import Config
from nmt.data import PreparedData
from nmt.evaluate import ValidationResult, attention_maps
from nmt.models import ModelSummary
from nmt.models.base import Seq2Seq

NUM_SAMPLES = 5  # sample translations shown per validation


class Tracker:
    """Writes `run_dir/tensorboard/` on rank 0; on other ranks every method does nothing."""

    def __init__(self, run_dir: Path, cfg: Config, summary: ModelSummary, enabled: bool) -> None:
        self.cfg = cfg
        self.writer = SummaryWriter(str(run_dir / "tensorboard")) if enabled else None
        if self.writer:
            self.writer.add_text("model", f"```\n{summary}\n```")
        self.summary = summary

    def train_scalars(
        self, step: int, loss: float, grad_norm: float, tokens_per_s: float, lr: float
    ) -> None:
        if not self.writer:
            return
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/grad_norm", grad_norm, step)
        self.writer.add_scalar("train/target_tokens_per_s", tokens_per_s, step)

    def validation(
        self,
        step: int,
        result: ValidationResult,
        model: Seq2Seq,
        data: PreparedData,
        device: torch.device,
    ) -> None:
        """Scalars, a table of sample translations, and heatmaps of fixed validation sentences."""
        if not self.writer:
            return
        for name in ("loss", "perplexity", "bleu", "chrf"):
            self.writer.add_scalar(f"valid/{name}", getattr(result, name), step)
        split = data.splits[self.cfg.data.valid_split]
        rows = ["| source | reference | hypothesis |", "| --- | --- | --- |"]
        for index in range(min(NUM_SAMPLES, len(split))):
            rows.append(
                f"| {split[index]['src']} | {split[index]['ref']} | {result.hypotheses[index]} |"
            )
        rows.append(f"\nBLEU {result.bleu:.2f} ({result.bleu_signature})")
        self.writer.add_text("valid/samples", "\n".join(rows), step)
        for index in range(min(self.cfg.train.num_heatmaps, len(split))):
            self._heatmaps(step, index, model, data, split[index], result.hypotheses[index], device)

    def _heatmaps(self, step, index, model, data, row, hypothesis: str, device) -> None:
        """Per decoder layer the head-averaged map; the last layer's heads as a grid."""
        hyp_ids = data.tgt_tokenizer.encode([hypothesis])[0]
        layers = attention_maps(model, row["src_ids"], hyp_ids, device)
        src_labels = [*data.src_tokenizer.pieces(row["src_ids"]), "</s>"]
        tgt_labels = [*data.tgt_tokenizer.pieces(hyp_ids), "</s>"]
        for layer, attn in enumerate(layers):
            figure = viz.heatmap(attn.mean(0).numpy(), src_labels, tgt_labels, f"layer {layer}")
            image = viz.to_image(figure)
            self.writer.add_image(
                f"attention/{index}/layer_{layer}", image, step, dataformats="HWC"
            )
        if layers and layers[-1].shape[0] > 1:
            grid = viz.head_grid(layers[-1].numpy(), src_labels, tgt_labels, "last layer")
            self.writer.add_image(
                f"attention/{index}/last_layer_heads", viz.to_image(grid), step, dataformats="HWC"
            )

    def close(self, best_bleu: float, best_step: int, final_step: int) -> None:
        if not self.writer:
            return
        hparams = {
            "model": self.cfg.model.arch,
            "data": self.cfg.data.name,
            "parameters": self.summary.num_parameters,
            **{f"train.{k}": v for k, v in dataclasses.asdict(self.cfg.train).items()
               if isinstance(v, (int, float, str, bool))},
        }  # fmt: skip
        metrics = {"hparam/best_bleu": best_bleu, "hparam/best_step": best_step,
                   "hparam/final_step": final_step}  # fmt: skip
        self.writer.add_hparams(hparams, metrics, run_name="hparams")
        self.writer.close()

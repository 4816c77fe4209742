"""Model construction and summary: the only module that knows which architectures exist."""

from __future__ import annotations

from dataclasses import dataclass

from nmt.config import ModelConfig
from nmt.errors import UserError
from nmt.models.base import DecoderOutput, Memory, Seq2Seq, State, select
from nmt.models.rnn import RNNSeq2Seq
from nmt.models.transformer import Transformer

__all__ = [
    "DecoderOutput",
    "Memory",
    "ModelSummary",
    "Seq2Seq",
    "State",
    "build_model",
    "count_parameters",
    "model_summary",
    "select",
]

_ARCHITECTURES: dict[str, type[Seq2Seq]] = {"transformer": Transformer, "rnn": RNNSeq2Seq}


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    """The `Seq2Seq` that `cfg.arch` names, freshly initialised (see each `reset_parameters`)."""
    if cfg.arch not in _ARCHITECTURES:
        raise UserError(f"unknown model.arch={cfg.arch!r}; choose one of {sorted(_ARCHITECTURES)}")
    return _ARCHITECTURES[cfg.arch](cfg, src_vocab_size, tgt_vocab_size)


def count_parameters(model: Seq2Seq) -> dict[str, int]:
    """Parameters per top-level part (src_embed, tgt_embed, encoder, decoder, output).

    A shared tensor (tied embeddings) is counted once, under the first part that holds it.
    """
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():  # skips repeats of a shared tensor
        part = name.split(".", 1)[0]
        counts[part] = counts.get(part, 0) + param.numel()
    return counts


@dataclass
class ModelSummary:
    """What training logs about a model before it starts."""

    parameters: dict[str, int]  # per part, shared tensors once
    flops_per_token: float  # training (forward + backward) FLOPs per target token
    src_len: float  # the average lengths the FLOPs assume
    tgt_len: float

    @property
    def num_parameters(self) -> int:
        return sum(self.parameters.values())

    def __str__(self) -> str:
        lines = [f"{part:<12}{count:>14,}" for part, count in self.parameters.items()]
        lines.append(f"{'total':<12}{self.num_parameters:>14,}")
        lines.append(
            f"training FLOPs per target token: {self.flops_per_token / 1e6:,.1f} M "
            f"(source {self.src_len:.1f}, target {self.tgt_len:.1f} tokens on average)"
        )
        return "\n".join(lines)


def model_summary(model: Seq2Seq, src_len: float, tgt_len: float) -> ModelSummary:
    """Parameter counts per part and training FLOPs per target token (`Seq2Seq.flops_per_token`:
    matrix products only, backward = 2 x forward) at average lengths `src_len`, `tgt_len`.
    """
    return ModelSummary(
        parameters=count_parameters(model),
        flops_per_token=model.flops_per_token(src_len, tgt_len),
        src_len=src_len,
        tgt_len=tgt_len,
    )

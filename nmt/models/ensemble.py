"""An ensemble of translation models that is itself a `Seq2Seq`: greedy search, beam search,
sampling and forced scoring run on it unchanged.

Its next-token distribution is the mean of its members' probabilities, p(y) = 1/n Σ_i p_i(y),
returned as logits log p(y) = logsumexp_i log p_i(y) − log n, already normalised, so the
searches' own log-softmax leaves them as they are. Members may differ in architecture (an RNN
beside a Transformer) as long as they read the same source ids and write the same target ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nmt.models.base import DecoderOutput, Memory, Seq2Seq, State


class Ensemble(Seq2Seq):
    """The members' mean next-token probabilities; `members` share both vocabularies.

    Memory: the members' encoder states concatenated along the feature dimension (their widths
    differ across architectures; the source positions and mask are the same), so `select` tiles
    and reorders all of them at once. State: each member's cache under the key prefix `"<i>."`.
    """

    def __init__(self, members: Sequence[Seq2Seq]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        # Each member's encoder state width: a fact of its architecture, the same at every
        # call, recorded by `encode` rather than asked of each architecture.
        self._widths: list[int] = []

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        memories = [member.encode(src, src_mask) for member in self.members]
        self._widths = [m.states.size(-1) for m in memories]
        dtype = memories[0].states.dtype
        for memory in memories[1:]:  # under autocast one may be bf16, another fp32
            dtype = torch.promote_types(dtype, memory.states.dtype)
        return Memory(torch.cat([m.states.to(dtype) for m in memories], dim=-1), src_mask)

    def _member_memories(self, memory: Memory) -> list[Memory]:
        return [Memory(part, memory.mask) for part in memory.states.split(self._widths, dim=-1)]

    def decode(
        self,
        tgt_in: Tensor,
        memory: Memory,
        state: State | None = None,
        need_attention: bool = False,
    ) -> DecoderOutput:
        """Log of the members' mean next-token probabilities (B, T, V) float32; attention is the
        mean of the members' (B, T, S); no per-layer attention (members' layers differ)."""
        log_probs, attns, new_state = [], [], {}
        for i, (member, member_memory) in enumerate(
            zip(self.members, self._member_memories(memory))
        ):
            prefix = f"{i}."
            member_state = None
            if state is not None:
                member_state = {
                    k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)
                }
            out = member.decode(tgt_in, member_memory, member_state, need_attention=need_attention)
            log_probs.append(torch.log_softmax(out.logits.float(), dim=-1))
            attns.append(out.attn)
            new_state.update({prefix + k: v for k, v in out.state.items()})
        logits = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(self.members))
        attn = torch.stack([a.float() for a in attns]).mean(0) if need_attention else None
        return DecoderOutput(logits, new_state, attn)

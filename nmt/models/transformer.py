"""Transformer encoder-decoder (Vaswani et al. 2017, "Attention Is All You Need") with a key/value
cache for incremental decoding. Equations and sections cite that paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config import ModelConfig
from nmt.errors import UserError
from nmt.models.base import (
    DecoderOutput,
    Memory,
    Seq2Seq,
    State,
    embeddings,
    output_layer,
)
from nmt.vocab import PAD_ID


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    dropout: float = 0.0,
    need_attention: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention softmax(QKᵀ/√d_k) V (eq. 1).

    q (B, N, T, d_k); k, v (B, N, S, d_k); `mask` bool, broadcastable to (B, N, T, S), True =
    may attend. `causal`: query t is at absolute position S - T + t and sees keys up to it (a
    cache holds the first S - T keys). Returns (B, N, T, d_k) and, with `need_attention`, the
    weights (B, N, T, S) from an explicit computation; otherwise `F.scaled_dot_product_attention`
    (fused Flash / memory-efficient kernels on GPU) and None.
    """
    num_queries, num_keys = q.size(-2), k.size(-2)
    if causal and mask is None and num_queries == num_keys and not need_attention:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True), None
    if causal:
        future = torch.ones(num_queries, num_keys, dtype=torch.bool, device=q.device)
        causal_mask = future.tril(diagonal=num_keys - num_queries)
        mask = causal_mask if mask is None else mask & causal_mask
    if not need_attention:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout), None
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return F.dropout(weights, p=dropout) @ v, weights


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_N) W^O, head_n = Attention(Q W^Q_n, K W^K_n,
    V W^V_n) (§3.2.2). Keys and values are projected separately (`project_kv`) so a decoder can
    cache them: the growing self-attention prefix, or the memory projected once.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, N, T, D/N)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, N, S, D/N) of x (B, S, D)."""
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def forward(
        self,
        x: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        need_attention: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Queries from x (B, T, D) over projected k, v -> (B, T, D), weights (B, N, T, S)."""
        dropout = self.dropout if self.training else 0.0
        q = self._split_heads(self.q_proj(x))
        out, weights = attention(q, k, v, mask, causal, dropout, need_attention)
        return self.out_proj(out.transpose(1, 2).flatten(2)), weights


class Positions(nn.Module):
    """Adds sinusoidal position encodings (§3.5) or learned position embeddings to (B, T, D)."""

    def __init__(self, d_model: int, max_positions: int, learned: bool) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.embedding = nn.Embedding(max_positions, d_model) if learned else None
        # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
        position = torch.arange(max_positions, dtype=torch.float).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_positions, d_model)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        self.register_buffer("sinusoids", table, persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (B, T, D) holds positions offset .. offset + T - 1."""
        end = offset + x.size(1)
        if end > self.max_positions:
            raise UserError(
                f"a sequence of {end} tokens exceeds model.max_positions={self.max_positions}"
            )
        table = self.sinusoids if self.embedding is None else self.embedding.weight
        return x + table[offset:end].to(x.dtype)


class _Layer(nn.Module):
    """Residual sublayers (§3.1, §5.4): pre-norm x + Dropout(f(LN(x))), or the paper's post-norm
    LN(x + Dropout(f(x))). Subclasses call `_in` on a sublayer's input and `_out` on its result.
    """

    def __init__(self, cfg: ModelConfig, num_sublayers: int) -> None:
        super().__init__()
        d, self.norm_first = cfg.hidden_size, cfg.norm_first
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(num_sublayers))
        self.dropout = nn.Dropout(cfg.dropout)
        # FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (eq. 2).
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_size), nn.ReLU(), nn.Linear(cfg.ffn_size, d))

    def _in(self, index: int, x: Tensor) -> Tensor:
        return self.norms[index](x) if self.norm_first else x

    def _out(self, index: int, x: Tensor, sublayer_out: Tensor) -> Tensor:
        x = x + self.dropout(sublayer_out)
        return x if self.norm_first else self.norms[index](x)


class EncoderLayer(_Layer):
    """Self-attention and feed-forward sublayers (§3.1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, num_sublayers=2)
        self.self_attn = MultiHeadAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """x (B, S, D), key_mask (B, 1, 1, S) -> (B, S, D)."""
        h = self._in(0, x)
        x = self._out(0, x, self.self_attn(h, *self.self_attn.project_kv(h), mask=key_mask)[0])
        return self._out(1, x, self.ffn(self._in(1, x)))


class DecoderLayer(_Layer):
    """Masked self-attention, cross-attention over the memory, feed-forward (§3.1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, num_sublayers=3)
        self.self_attn = MultiHeadAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)

    def forward(
        self,
        x: Tensor,
        past_kv: tuple[Tensor, Tensor] | None,
        cross_kv: tuple[Tensor, Tensor],
        key_mask: Tensor,
        need_attention: bool,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        """x (B, T, D) continuing a prefix whose self-attention keys/values `past_kv` (B, N, P,
        D/N) are cached -> x (B, T, D), keys/values of all P + T positions, cross-attention
        weights (B, N, T, S) if `need_attention`.
        """
        h = self._in(0, x)
        k, v = self.self_attn.project_kv(h)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        x = self._out(0, x, self.self_attn(h, k, v, causal=True)[0])
        attended, weights = self.cross_attn(
            self._in(1, x), *cross_kv, mask=key_mask, need_attention=need_attention
        )
        x = self._out(1, x, attended)
        return self._out(2, x, self.ffn(self._in(2, x))), (k, v), weights


class TransformerEncoder(nn.Module):
    """Positions, dropout, a stack of encoder layers, and a final LayerNorm when pre-norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.positions = Positions(cfg.hidden_size, cfg.max_positions, cfg.learned_positions)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size) if cfg.norm_first else nn.Identity()

    def forward(self, embedded: Tensor, mask: Tensor) -> Tensor:
        """Scaled embeddings (B, S, D), mask (B, S) -> (B, S, D).

        Only keys are masked, never queries, so no attention row is empty (pad queries attend to
        the real tokens; their outputs are finite and ignored) and SDPA cannot produce NaN.
        """
        x = self.dropout(self.positions(embedded))
        key_mask = mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.norm(x)


class TransformerDecoder(nn.Module):
    """Decoder stack with a key/value cache in a flat, batch-first `State`:

    "layer{i}.self_k" / "layer{i}.self_v" (B, N, P, D/N): self-attention over the P positions
    decoded so far, growing by T each call; "layer{i}.cross_k" / "layer{i}.cross_v" (B, N, S,
    D/N): the memory projected once on the first call and reused. A step costs O(P).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.positions = Positions(cfg.hidden_size, cfg.max_positions, cfg.learned_positions)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size) if cfg.norm_first else nn.Identity()

    def forward(
        self, embedded: Tensor, memory: Memory, state: State, need_attention: bool
    ) -> tuple[Tensor, State, tuple[Tensor, ...]]:
        """Scaled embeddings (B, T, D) -> (B, T, D), next state, per-layer cross weights."""
        offset = state["layer0.self_k"].size(2) if "layer0.self_k" in state else 0
        x = self.dropout(self.positions(embedded, offset))
        key_mask = memory.mask[:, None, None, :]
        new_state: State = {}
        layer_attn = []
        for i, layer in enumerate(self.layers):
            name = f"layer{i}."
            if name + "cross_k" in state:
                cross_kv = state[name + "cross_k"], state[name + "cross_v"]
            else:
                cross_kv = layer.cross_attn.project_kv(memory.states)
            past_kv = (state[name + "self_k"], state[name + "self_v"]) if offset else None
            x, (k, v), weights = layer(x, past_kv, cross_kv, key_mask, need_attention)
            new_state[name + "self_k"], new_state[name + "self_v"] = k, v
            new_state[name + "cross_k"], new_state[name + "cross_v"] = cross_kv
            if weights is not None:
                layer_attn.append(weights)
        return self.norm(x), new_state, tuple(layer_attn)


class Transformer(Seq2Seq):
    """The Transformer behind the `Seq2Seq` contract (D = `hidden_size` = d_model).

    Embeddings are scaled by √D (§3.4); with `tie_embeddings`, source, target and output
    embeddings are one matrix (§3.4, Press & Wolf 2017), which needs a joint vocabulary.
    """

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise UserError(
                f"model.hidden_size={cfg.hidden_size} is not divisible by "
                f"model.num_heads={cfg.num_heads}"
            )
        self.cfg = cfg
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        d = cfg.hidden_size
        self.embed_scale = math.sqrt(d)
        self.src_embed, self.tgt_embed = embeddings(
            src_vocab_size, tgt_vocab_size, d, tie=cfg.tie_embeddings
        )
        self.encoder = TransformerEncoder(cfg)
        self.decoder = TransformerDecoder(cfg)
        self.output = output_layer(self.tgt_embed, tie=cfg.tie_embeddings)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linear weights and zero biases (as in the Annotated Transformer and
        fairseq); embeddings ~ N(0, D^-0.5), so scaled by √D they have unit variance (fairseq),
        with the padding row zero; LayerNorm at identity. A tied output matrix is the embedding.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embed in (self.src_embed, self.tgt_embed):
            nn.init.normal_(embed.weight, std=self.cfg.hidden_size**-0.5)
            with torch.no_grad():
                embed.weight[PAD_ID].zero_()
        for positions in (self.encoder.positions, self.decoder.positions):
            if positions.embedding is not None:
                nn.init.normal_(positions.embedding.weight, std=self.cfg.hidden_size**-0.5)

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """Source ids (B, S), mask (B, S) -> Memory with states (B, S, D)."""
        states = self.encoder(self.src_embed(src) * self.embed_scale, src_mask)
        return Memory(states=states, mask=src_mask)

    def decode(
        self,
        tgt_in: Tensor,
        memory: Memory,
        state: State | None = None,
        need_attention: bool = False,
    ) -> DecoderOutput:
        """Logits (B, T, V) after each of `tgt_in` (B, T), continuing `state` if given."""
        embedded = self.tgt_embed(tgt_in) * self.embed_scale
        x, state, layer_attn = self.decoder(embedded, memory, state or {}, need_attention)
        logits = self.output(x)
        if not need_attention:
            return DecoderOutput(logits=logits, state=state)
        attn = layer_attn[-1].mean(dim=1)
        return DecoderOutput(logits=logits, state=state, attn=attn, layer_attn=layer_attn)

    def flops_per_token(self, src_len: float, tgt_len: float) -> float:
        """3 x forward matmul FLOPs per target token (2 per multiply-add), with d = d_model,
        f = ffn_size, S, T the average lengths. Per source token, each encoder layer:
        2·(4d² + 2df) + 4·S·d (QKᵀ and AV), and each decoder layer's cross K, V: 2·2d². Per
        target token, each decoder layer: 2·(6d² + 2df) + 4·T·d (causal self-attention, counted
        over the whole masked matrix as kernels compute it) + 4·S·d; the output layer 2·d·V.
        Source terms are scaled by S/T.
        """
        cfg = self.cfg
        d, f = cfg.hidden_size, cfg.ffn_size
        encoder = cfg.num_encoder_layers * (2 * (4 * d * d + 2 * d * f) + 4 * src_len * d)
        cross_kv = cfg.num_decoder_layers * 2 * 2 * d * d
        decoder = cfg.num_decoder_layers * (
            2 * (6 * d * d + 2 * d * f) + 4 * tgt_len * d + 4 * src_len * d
        )
        output = 2 * d * self.tgt_vocab_size
        return 3 * (decoder + output + src_len / tgt_len * (encoder + cross_kv))

"""Transformer encoder-decoder (Vaswani et al. 2017, "Attention Is All You Need") with a key/value
cache for incremental decoding. Equations and sections cite that paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

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
        return _fused_attention(q, k, v, dropout_p=dropout, is_causal=True), None
    if causal:
        future = torch.ones(num_queries, num_keys, dtype=torch.bool, device=q.device)
        causal_mask = future.tril(diagonal=num_keys - num_queries)
        mask = causal_mask if mask is None else mask & causal_mask
    if not need_attention:
        return _fused_attention(q, k, v, attn_mask=mask, dropout_p=dropout), None
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return F.dropout(weights, p=dropout) @ v, weights


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, **options) -> Tensor:
    """`F.scaled_dot_product_attention`, in bf16/fp16 on a CPU with its math kernel: there the
    fused CPU Flash kernel (PyTorch 2.13) ran forward and backward 5-15x slower than the math
    kernel for our shapes (d_k 32, 16-token sentences), more than the bf16 matmuls saved."""
    if q.device.type == "cpu" and q.dtype != torch.float32:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, **options)
    return F.scaled_dot_product_attention(q, k, v, **options)


# Keys and values, each (B, N, S, D/N): what attention caches.
KeyValues = tuple[Tensor, Tensor]


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_N) W^O, head_n = Attention(Q W^Q_n, K W^K_n,
    V W^V_n) (§3.2.2). Queries come from x, keys and values from `source` (x itself in
    self-attention, the memory in cross-attention).

    Incremental decoding hands in what earlier calls projected, so a step costs O(P), not
    O(P²): `past_kv`, the growing self-attention cache, to which this call's keys and values are
    appended; or `kv`, the memory's keys and values, projected once and then reused as they are.
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

    def forward(
        self,
        x: Tensor,
        source: Tensor,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        past_kv: KeyValues | None = None,
        kv: KeyValues | None = None,
        need_attention: bool = False,
    ) -> tuple[Tensor, KeyValues, Tensor | None]:
        """x (B, T, D) attends over `source` (B, S, D) -> output (B, T, D), the keys and values
        attended over (B, N, S', D/N) each (S' = P + S after a `past_kv` of P positions; to be
        cached by the caller), and the weights (B, N, T, S') with `need_attention`, else None.
        `mask` and `causal` as in `attention`; with `kv`, `source` is not projected.
        """
        if kv is None:
            kv = self._split_heads(self.k_proj(source)), self._split_heads(self.v_proj(source))
            if past_kv is not None:
                kv = torch.cat([past_kv[0], kv[0]], dim=2), torch.cat([past_kv[1], kv[1]], dim=2)
        # Queries after keys and values: in self-attention all three read x, and autograd sums
        # their gradients in reverse order of creation; this order keeps the sum's rounding.
        q = self._split_heads(self.q_proj(x))
        dropout = self.dropout if self.training else 0.0
        out, weights = attention(q, *kv, mask, causal, dropout, need_attention)
        return self.out_proj(out.transpose(1, 2).flatten(2)), kv, weights


def feed_forward(cfg: ModelConfig) -> nn.Sequential:
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (eq. 2), applied at each position alike."""
    d, f = cfg.hidden_size, cfg.ffn_size
    return nn.Sequential(nn.Linear(d, f), nn.ReLU(), nn.Linear(f, d))


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


class Residual(nn.Module):
    """A sublayer f in a residual connection with layer normalisation (§3.1, §5.4): pre-norm
    x + Dropout(f(LN(x))), which trains deep stacks stably, or the paper's post-norm
    LN(x + Dropout(f(x))). As the Annotated Transformer's `SublayerConnection`, it receives f
    at call time, so one module serves attention and feed-forward alike.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor | tuple]) -> Tensor | tuple:
        """x (B, T, D) -> (B, T, D). If f returns a tuple (attention: output, keys and values,
        weights), its first item is the sublayer's output and the rest come back after x.
        """
        out = sublayer(self.norm(x) if self.norm_first else x)
        out, *extras = out if isinstance(out, tuple) else (out,)
        x = x + self.dropout(out)
        if not self.norm_first:
            x = self.norm(x)
        return (x, *extras) if extras else x


def _load_legacy_norms(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before `Residual` kept each layer's sublayer norms in `norms.{i}`:
    load them into `residuals.{i}.norm` (the parameters, their order and values are the same).
    A load_state_dict pre-hook (public as `register_load_state_dict_pre_hook` only from torch
    2.5; nmt supports 2.4).
    """
    for key in [key for key in state_dict if key.startswith(prefix + "norms.")]:
        index, name = key.removeprefix(prefix + "norms.").split(".", 1)
        state_dict[f"{prefix}residuals.{index}.norm.{name}"] = state_dict.pop(key)


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward, each a residual sublayer (§3.1).

    The residual norms are registered first, then the FFN, then attention: parameters are
    listed (optimiser state, gradient clipping) and initialised in this order, and it is the
    order that saved runs and fixed-seed losses were made with.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.residuals = nn.ModuleList(Residual(cfg) for _ in range(2))
        self.ffn = feed_forward(cfg)
        self.self_attn = MultiHeadAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)
        self._register_load_state_dict_pre_hook(_load_legacy_norms, with_module=True)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """x (B, S, D), key_mask (B, 1, 1, S) -> (B, S, D)."""
        x, _, _ = self.residuals[0](x, lambda h: self.self_attn(h, h, mask=key_mask))
        return self.residuals[1](x, self.ffn)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the memory, feed-forward (§3.1), each a
    residual sublayer; registered in the order `EncoderLayer` explains.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.residuals = nn.ModuleList(Residual(cfg) for _ in range(3))
        self.ffn = feed_forward(cfg)
        self.self_attn = MultiHeadAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)
        self._register_load_state_dict_pre_hook(_load_legacy_norms, with_module=True)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        key_mask: Tensor,
        cache: tuple[KeyValues, KeyValues] | None,
        need_attention: bool,
    ) -> tuple[Tensor, tuple[KeyValues, KeyValues], Tensor | None]:
        """x (B, T, D) continues a prefix of P positions over `memory` (B, S, D) -> x (B, T, D),
        the next `cache`, cross-attention weights (B, N, T, S) if `need_attention`.

        `cache` (None on the first call) = (self-attention keys/values of the P positions,
        (B, N, P, D/N) each; the memory's cross-attention keys/values, (B, N, S, D/N) each).
        """
        past_kv, memory_kv = cache if cache is not None else (None, None)
        x, self_kv, _ = self.residuals[0](
            x, lambda h: self.self_attn(h, h, causal=True, past_kv=past_kv)
        )
        x, cross_kv, weights = self.residuals[1](
            x,
            lambda h: self.cross_attn(
                h, memory, mask=key_mask, kv=memory_kv, need_attention=need_attention
            ),
        )
        return self.residuals[2](x, self.ffn), (self_kv, cross_kv), weights


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
        offset = state["layer0.self_k"].size(2) if state else 0
        x = self.dropout(self.positions(embedded, offset))
        key_mask = memory.mask[:, None, None, :]
        new_state: State = {}
        layer_attn = []
        for i, layer in enumerate(self.layers):
            names = [f"layer{i}.{kind}" for kind in ("self_k", "self_v", "cross_k", "cross_v")]
            cache = None
            if state:  # continuing: this layer's keys and values from the earlier calls
                k, v, memory_k, memory_v = (state[name] for name in names)
                cache = (k, v), (memory_k, memory_v)
            x, (self_kv, cross_kv), weights = layer(
                x, memory.states, key_mask, cache, need_attention
            )
            new_state.update(zip(names, (*self_kv, *cross_kv), strict=True))
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

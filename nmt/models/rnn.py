"""RNN encoder-decoder with additive attention: Bahdanau, Cho & Bengio (2015), "Neural Machine
Translation by Jointly Learning to Align and Translate". Equations cite that paper; "A.x" and
"B.x" are its appendices.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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

_CELLS = {"gru": (nn.GRU, nn.GRUCell, 3), "lstm": (nn.LSTM, nn.LSTMCell, 4)}  # gates per cell


class AdditiveAttention(nn.Module):
    """Additive attention (eqs. 5-6, A.1.2), with the paper's names in brackets:

    e_ij = vᵀ tanh(W_s s_{i-1} + W_h h_j),  α_ij = softmax_j(e_ij),  c_i = Σ_j α_ij h_j.
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_size, attention_size, bias=False)  # W_s [W_a]
        self.key_proj = nn.Linear(key_size, attention_size, bias=False)  # W_h [U_a]
        self.v = nn.Linear(attention_size, 1, bias=False)  # v [v_a]

    def project_keys(self, states: Tensor) -> Tensor:
        """W_h h_j for encoder states (B, S, Hk) -> (B, S, A): once per sentence, not per step."""
        return self.key_proj(states)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """e_ij (B, S) for decoder state s_{i-1} (B, Hq) and projected keys W_h h_j (B, S, A)."""
        return self.v(torch.tanh(self.query_proj(query).unsqueeze(1) + keys)).squeeze(-1)

    def forward(
        self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Context c_i (B, Hv) and weights α_i (B, S) over `values` h_j (B, S, Hv).

        Padded positions (`mask` False) get exactly zero weight: their score is the dtype's most
        negative finite number, so exp underflows to 0 and a fully padded row cannot give NaN.
        """
        scores = self.scores(query, keys).masked_fill(~mask, torch.finfo(keys.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1).to(values.dtype), values).squeeze(1)
        return context, weights


class RNNEncoder(nn.Module):
    """Bidirectional GRU/LSTM (A.2.1) over packed sequences, so padding never enters a state."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        rnn_cls = _CELLS[cfg.rnn_type][0]
        self.rnn = rnn_cls(
            cfg.embed_size,
            cfg.hidden_size,
            num_layers=cfg.num_encoder_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.num_encoder_layers > 1 else 0.0,
        )

    def forward(self, embedded: Tensor, mask: Tensor) -> Tensor:
        """Embedded source (B, S, E), right-padded `mask` (B, S) -> h_j = [→h_j; ←h_j] (B, S, 2H).

        Outputs at padded positions are zeros.
        """
        lengths = mask.sum(dim=1).cpu()
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.rnn(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=embedded.size(1))
        return states


class AttentionDecoder(nn.Module):
    """Decoder RNN with additive attention, in the paper's formulation (A.2.2), no input feeding:

    c_i from s_{i-1} (eqs. 5-6); s_i = f(s_{i-1}, E y_{i-1}, c_i) (eq. 4), where f is a stack of
    GRU/LSTM cells, the first taking [E y_{i-1}; c_i]; then the maxout deep output
    t_i = max-pool-2(U_o s_i + V_o E y_{i-1} + C_o c_i) (A.2.2, using s_i as in eq. 4).

    State (all batch-first): "hidden" (B, L, H) = s_{i-1} per layer, "cell" (B, L, H) for the
    LSTM, and "keys" (B, S, A) = W_h h_j, projected once from the memory on the first call.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cell_cls = _CELLS[cfg.rnn_type][1]
        context_size = 2 * cfg.hidden_size
        self.is_lstm = cfg.rnn_type == "lstm"
        self.num_layers, self.hidden_size = cfg.num_decoder_layers, cfg.hidden_size
        self.cells = nn.ModuleList(
            cell_cls(
                cfg.embed_size + context_size if layer == 0 else cfg.hidden_size, cfg.hidden_size
            )
            for layer in range(cfg.num_decoder_layers)
        )
        self.attention = AdditiveAttention(cfg.hidden_size, context_size, cfg.attention_size)
        # s_0 = tanh(W_init ←h_1) (A.2.2), one initial state per decoder layer.
        self.init_proj = nn.Linear(cfg.hidden_size, cfg.num_decoder_layers * cfg.hidden_size)
        # [U_o; V_o; C_o] in one matrix over [s_i; E y_{i-1}; c_i], 2 units per maxout unit.
        self.readout = nn.Linear(
            cfg.hidden_size + cfg.embed_size + context_size, 2 * cfg.embed_size
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def init_state(self, memory: Memory) -> State:
        """The state before the first target token: s_0 from ←h_1 and the projected keys."""
        # ←h_1, the backward RNN's state at the first source word: it has read the whole sentence.
        backward_first = memory.states[:, 0, self.hidden_size :]
        hidden = torch.tanh(self.init_proj(backward_first)).unflatten(-1, (self.num_layers, -1))
        state = {"hidden": hidden, "keys": self.attention.project_keys(memory.states)}
        if self.is_lstm:
            state["cell"] = torch.zeros_like(hidden)
        return state

    def forward(
        self, embedded: Tensor, memory: Memory, state: State
    ) -> tuple[Tensor, State, Tensor]:
        """Run over embedded targets (B, T, E) -> readout t (B, T, E), next state, α (B, T, S)."""
        hidden = list(state["hidden"].unbind(1))
        cell = list(state["cell"].unbind(1)) if self.is_lstm else []
        keys = state["keys"]
        tops, contexts, weights = [], [], []
        for i in range(embedded.size(1)):
            context, alpha = self.attention(hidden[-1], keys, memory.states, memory.mask)
            x = torch.cat([embedded[:, i], context], dim=-1)
            for layer, rnn_cell in enumerate(self.cells):
                if self.is_lstm:
                    hidden[layer], cell[layer] = rnn_cell(x, (hidden[layer], cell[layer]))
                else:
                    hidden[layer] = rnn_cell(x, hidden[layer])
                x = self.dropout(hidden[layer])  # between layers, and before the readout
            tops.append(x)
            contexts.append(context)
            weights.append(alpha)
        readout_in = torch.cat([torch.stack(tops, 1), embedded, torch.stack(contexts, 1)], -1)
        readout = self.readout(readout_in).unflatten(-1, (-1, 2)).amax(-1)  # maxout, pool 2
        new_state = {"hidden": torch.stack(hidden, 1), "keys": keys}
        if self.is_lstm:
            new_state["cell"] = torch.stack(cell, 1)
        return self.dropout(readout), new_state, torch.stack(weights, 1)


class RNNSeq2Seq(Seq2Seq):
    """Bahdanau et al. (2015) encoder-decoder behind the `Seq2Seq` contract.

    Sizes: embeddings E = `embed_size`, H = `hidden_size` per direction (memory is 2H wide),
    A = `attention_size`. Output p(y_i) = softmax(W_o t_i) (A.2.2); with `tie_embeddings`, W_o
    and both embedding tables are one matrix (needs a joint vocabulary).
    """

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        if cfg.rnn_type not in _CELLS:
            raise UserError(f"model.rnn_type={cfg.rnn_type!r} is not one of {sorted(_CELLS)}")
        self.cfg = cfg
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.src_embed, self.tgt_embed = embeddings(
            src_vocab_size, tgt_vocab_size, cfg.embed_size, tie=cfg.tie_embeddings
        )
        self.encoder = RNNEncoder(cfg)
        self.decoder = AttentionDecoder(cfg)
        self.output = output_layer(self.tgt_embed, tie=cfg.tie_embeddings)  # W_o
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Recurrent matrices random orthogonal per gate and biases zero (the paper, B.1); other
        matrices Xavier-uniform and embeddings (and a tied W_o) N(0, 1) instead of the paper's
        N(0, 0.01²) and N(0, 0.001²): with Adam the tiny weights train slower (Multi30k de→en,
        5 minutes on one CPU thread: val BLEU 11.2 with the paper's scales, 13.2 with these).
        The padding row is zero.
        """
        for name, param in self.named_parameters():
            if "bias" in name:
                nn.init.zeros_(param)
            elif "weight_hh" in name:
                for gate in param.detach().split(param.size(1)):
                    nn.init.orthogonal_(gate)
            elif name.startswith(("src_embed", "tgt_embed")):
                nn.init.normal_(param, std=1.0)
            else:
                nn.init.xavier_uniform_(param)
        with torch.no_grad():
            self.src_embed.weight[PAD_ID].zero_()
            self.tgt_embed.weight[PAD_ID].zero_()

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """Source ids (B, S), right-padded mask (B, S) -> Memory with states (B, S, 2H)."""
        states = self.encoder(self.dropout(self.src_embed(src)), src_mask)
        return Memory(states=states, mask=src_mask)

    def decode(
        self,
        tgt_in: Tensor,
        memory: Memory,
        state: State | None = None,
        need_attention: bool = False,
    ) -> DecoderOutput:
        """Logits (B, T, V) after each of `tgt_in` (B, T); one recurrence step per position."""
        if state is None:
            state = self.decoder.init_state(memory)
        readout, state, alpha = self.decoder(self.dropout(self.tgt_embed(tgt_in)), memory, state)
        logits = self.output(readout)
        if not need_attention:
            return DecoderOutput(logits=logits, state=state)
        return DecoderOutput(logits=logits, state=state, attn=alpha, layer_attn=(alpha[:, None],))

    def flops_per_token(self, src_len: float, tgt_len: float) -> float:
        """3 x forward matmul FLOPs per target token (2 per multiply-add). Per source token:
        each encoder layer 2 directions x 2·g·H·(in + H) (g gates: 3 GRU, 4 LSTM; in = E, then
        2H), plus the keys W_h h_j 2·2H·A. Per target token: query 2·H·A, scores 2·S·A, context
        2·S·2H, decoder cells 2·g·H·(in + H) (in = E + 2H, then H), readout 2·(3H + E)·2E,
        output 2·E·V. Per sentence: s_0 2·H·L·H. Source terms are scaled by S/T.
        """
        cfg = self.cfg
        e, h, a, g = cfg.embed_size, cfg.hidden_size, cfg.attention_size, _CELLS[cfg.rnn_type][2]
        encoder = sum(
            2 * 2 * g * h * ((e if layer == 0 else 2 * h) + h)
            for layer in range(cfg.num_encoder_layers)
        )
        cells = sum(
            2 * g * h * ((e + 2 * h if layer == 0 else h) + h)
            for layer in range(cfg.num_decoder_layers)
        )
        attention = 2 * h * a + 2 * src_len * a + 2 * src_len * 2 * h
        decoder = attention + cells + 2 * (3 * h + e) * 2 * e + 2 * e * self.tgt_vocab_size
        per_sentence = src_len * (encoder + 2 * 2 * h * a) + 2 * h * cfg.num_decoder_layers * h
        return 3 * (decoder + per_sentence / tgt_len)

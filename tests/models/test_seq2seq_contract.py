"""The Seq2Seq contract, for every variant of both architectures (the `model` fixture):
attention weights, padding invariance, incremental == full decoding, and `select`."""

from __future__ import annotations

import pytest
import torch

from nmt.models import Memory, Seq2Seq, select

SRC_LENGTHS, TGT_LENGTHS = [7, 4, 2], [6, 3, 5]
ATOL = 1e-5


def test_attention_weights_are_distributions_over_real_source_positions(
    model: Seq2Seq, make_batch
) -> None:
    batch = make_batch(model, SRC_LENGTHS, TGT_LENGTHS)
    out = model(batch["src"], batch["src_mask"], batch["tgt_in"], need_attention=True)
    plain = model(batch["src"], batch["src_mask"], batch["tgt_in"])
    assert plain.attn is None and plain.layer_attn is None
    torch.testing.assert_close(out.logits, plain.logits, atol=ATOL, rtol=0)

    src_mask = batch["src_mask"][:, None, :]  # (B, 1, S)
    for weights in (out.attn, *(layer.flatten(1, 2) for layer in out.layer_attn)):
        assert weights.shape[0] == 3 and weights.shape[-1] == src_mask.shape[-1]
        assert (weights >= 0).all()
        assert (weights.masked_fill(src_mask, 0) == 0).all()  # exactly zero on padding
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert out.attn.shape == (3, max(TGT_LENGTHS), max(SRC_LENGTHS))


def test_padding_changes_no_real_position(model: Seq2Seq, make_batch) -> None:
    batch = make_batch(model, SRC_LENGTHS, TGT_LENGTHS)
    noisy = {key: value.clone() for key, value in batch.items()}
    generator = torch.Generator().manual_seed(7)
    for ids, mask in ((noisy["src"], batch["src_mask"]), (noisy["tgt_in"], batch["tgt_mask"])):
        ids[~mask] = torch.randint(4, 30, (int((~mask).sum()),), generator=generator)

    outputs = []
    for b in (batch, noisy):
        memory = model.encode(b["src"], batch["src_mask"])
        out = model.decode(b["tgt_in"], memory, need_attention=True)
        # Finite everywhere, padding included: a NaN there would poison the loss's gradient.
        assert torch.isfinite(memory.states).all() and torch.isfinite(out.logits).all()
        outputs.append((memory, out))
    (memory, out), (noisy_memory, noisy_out) = outputs
    src_real, tgt_real = batch["src_mask"], batch["tgt_mask"]
    torch.testing.assert_close(memory.states[src_real], noisy_memory.states[src_real])
    torch.testing.assert_close(out.logits[tgt_real], noisy_out.logits[tgt_real])
    torch.testing.assert_close(out.attn[tgt_real], noisy_out.attn[tgt_real])

    # Each sentence alone, without any padding, gives what it gave inside the padded batch.
    for row, (src_len, tgt_len) in enumerate(zip(SRC_LENGTHS, TGT_LENGTHS, strict=True)):
        src = batch["src"][row : row + 1, :src_len]
        tgt_in = batch["tgt_in"][row : row + 1, :tgt_len]
        alone = model(src, torch.ones_like(src, dtype=torch.bool), tgt_in, need_attention=True)
        torch.testing.assert_close(alone.logits[0], out.logits[row, :tgt_len], atol=ATOL, rtol=0)
        torch.testing.assert_close(
            alone.attn[0], out.attn[row, :tgt_len, :src_len], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("chunks", [[1] * 6, [3, 1, 2]])
def test_incremental_decoding_equals_full_decoding(
    model: Seq2Seq, make_batch, chunks: list[int]
) -> None:
    batch = make_batch(model, SRC_LENGTHS, [6, 6, 6])
    memory = model.encode(batch["src"], batch["src_mask"])
    full = model.decode(batch["tgt_in"], memory, need_attention=True)

    state, start, logits, attn = None, 0, [], []
    for size in chunks:
        out = model.decode(batch["tgt_in"][:, start : start + size], memory, state, True)
        state, start = out.state, start + size
        logits.append(out.logits)
        attn.append(out.attn)
    torch.testing.assert_close(torch.cat(logits, 1), full.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        torch.cat(logits, 1).log_softmax(-1), full.logits.log_softmax(-1), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(torch.cat(attn, 1), full.attn, atol=ATOL, rtol=0)
    for key, value in state.items():
        assert value.shape[0] == 3, f"state[{key!r}] is not batch-first"
        torch.testing.assert_close(value, full.state[key], atol=ATOL, rtol=0)


def test_select_reorders_memory_and_state_consistently(model: Seq2Seq, make_batch) -> None:
    batch = make_batch(model, SRC_LENGTHS, [4, 4, 4])
    memory = model.encode(batch["src"], batch["src_mask"])
    prefix = model.decode(batch["tgt_in"][:, :3], memory)
    index = torch.tensor([2, 0, 0, 1])  # reorder and tile, as beam search does
    next_tokens = batch["tgt_in"][:, 3:]
    before = dict(prefix.state)

    after_select = model.decode(
        next_tokens[index], select(memory, index), select(prefix.state, index), True
    )
    after_decode = model.decode(next_tokens, memory, prefix.state, True)

    torch.testing.assert_close(after_select.logits, after_decode.logits[index])
    torch.testing.assert_close(after_select.attn, after_decode.attn[index])
    selected_state = select(after_decode.state, index)
    assert selected_state.keys() == after_select.state.keys()
    for key, value in after_select.state.items():
        torch.testing.assert_close(value, selected_state[key])
    selected_memory = select(memory, index)
    assert isinstance(selected_memory, Memory)
    assert torch.equal(selected_memory.mask, batch["src_mask"][index])
    # decode returns a new state; the one passed in is left as it was (beam search reuses it).
    assert before.keys() == prefix.state.keys()
    assert all(prefix.state[key] is value for key, value in before.items())


def test_memory_projections_are_computed_once_and_carried_in_the_state(
    model: Seq2Seq, make_batch
) -> None:
    """The RNN's W_h h_j and the Transformer's cross-attention K/V come from the first call and
    are passed on unchanged; the Transformer's self-attention cache grows by T per call."""
    batch = make_batch(model, SRC_LENGTHS, [5, 5, 5])
    memory = model.encode(batch["src"], batch["src_mask"])
    first = model.decode(batch["tgt_in"][:, :2], memory)
    second = model.decode(batch["tgt_in"][:, 2:5], memory, first.state)
    per_sentence = [key for key in first.state if key == "keys" or "cross" in key]
    assert per_sentence, f"no projected memory in the state: {sorted(first.state)}"
    for key in per_sentence:
        assert second.state[key] is first.state[key]
        assert first.state[key].shape[0] == 3
    for key in (key for key in first.state if "self" in key):
        assert (first.state[key].shape[2], second.state[key].shape[2]) == (2, 5)

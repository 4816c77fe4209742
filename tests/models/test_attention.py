"""The attention functions against their formulas: Bahdanau's additive attention, and the two
paths (fused SDPA, explicit weights) of scaled dot-product attention."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.models.rnn import AdditiveAttention
from nmt.models.transformer import attention


def test_additive_attention_matches_the_formula() -> None:
    torch.manual_seed(0)
    batch, src_len, query_size, key_size = 3, 6, 5, 7
    attn = AdditiveAttention(query_size, key_size, attention_size=4)
    with torch.no_grad():
        for param in attn.parameters():
            param.normal_()
    query, states = torch.randn(batch, query_size), torch.randn(batch, src_len, key_size)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] + [False] * 5])
    keys = attn.project_keys(states)
    scores = attn.scores(query, keys)
    context, weights = attn(query, keys, states, mask)

    w_s, w_h, v = attn.query_proj.weight, attn.key_proj.weight, attn.v.weight[0]
    for b in range(batch):
        # e_bj = vᵀ tanh(W_s s + W_h h_j), then the softmax over real positions only.
        expected = torch.stack(
            [v @ torch.tanh(w_s @ query[b] + w_h @ states[b, j]) for j in range(src_len)]
        )
        torch.testing.assert_close(scores[b], expected, atol=1e-6, rtol=0)
        real = mask[b]
        alpha = torch.exp(expected[real]) / torch.exp(expected[real]).sum()
        torch.testing.assert_close(weights[b, real], alpha, atol=1e-6, rtol=0)
        assert torch.equal(weights[b, ~real], torch.zeros(int((~real).sum())))
        c = sum(alpha[j] * states[b, j] for j in range(int(real.sum())))
        torch.testing.assert_close(context[b], c, atol=1e-6, rtol=0)


def test_additive_attention_never_gives_nan_for_an_empty_source() -> None:
    attn = AdditiveAttention(5, 7, 4)
    states = torch.randn(2, 3, 7)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    context, weights = attn(torch.randn(2, 5), attn.project_keys(states), states, mask)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()


def _qkv(num_queries: int, num_keys: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    q = torch.randn(3, 2, num_queries, 8)
    return q, torch.randn(3, 2, num_keys, 8), torch.randn(3, 2, num_keys, 8)


@pytest.mark.parametrize(
    ("num_queries", "num_keys", "causal", "padded"),
    [
        (5, 7, False, True),  # cross-attention over a padded memory
        (6, 6, True, False),  # decoder self-attention, whole prefix (is_causal kernel)
        (2, 6, True, False),  # continuing after a 4-position cache
        (6, 6, True, True),  # causal and key padding together
    ],
)
def test_sdpa_and_explicit_paths_agree(
    num_queries: int, num_keys: int, causal: bool, padded: bool
) -> None:
    q, k, v = _qkv(num_queries, num_keys)
    mask = None
    if padded:
        lengths = torch.tensor([num_keys, 3, 1])
        mask = (torch.arange(num_keys) < lengths[:, None])[:, None, None, :]
    fused, no_weights = attention(q, k, v, mask, causal)
    explicit, weights = attention(q, k, v, mask, causal, need_attention=True)
    assert no_weights is None
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)

    # The weights are softmax(QKᵀ/√d_k) over allowed keys; the rest get exactly zero.
    allowed = torch.ones(3, 2, num_queries, num_keys, dtype=torch.bool)
    if causal:
        offset = num_keys - num_queries
        allowed &= torch.ones(num_queries, num_keys, dtype=torch.bool).tril(offset)
    if mask is not None:
        allowed &= mask
    scores = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(weights, scores.softmax(-1), atol=1e-6, rtol=0)
    assert torch.equal(weights[~allowed], torch.zeros(int((~allowed).sum())))


def _kernels_run(dtype: torch.dtype) -> tuple[set[str], torch.Tensor, torch.Tensor]:
    """The ATen ops that causal self-attention in `dtype` ran forward and backward on the CPU,
    its output and the gradient of q."""
    q, k, v = (t.to(dtype).requires_grad_() for t in _qkv(6, 6))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out, _ = attention(q, k, v, causal=True)
        out.float().sum().backward()
    return {event.key for event in prof.key_averages()}, out.float(), q.grad.float()


def test_bf16_attention_on_cpu_takes_the_math_kernel() -> None:
    """In bf16 the fused CPU Flash kernel ran 5-15x slower than the math kernel (the reason is in
    `_fused_attention`), so bf16 takes the math kernel and fp32 keeps the fused one; both give
    the fp32 result within bf16's precision."""
    fp32_ops, fp32_out, fp32_grad = _kernels_run(torch.float32)
    bf16_ops, bf16_out, bf16_grad = _kernels_run(torch.bfloat16)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in fp32_ops
    assert not [op for op in bf16_ops if "flash" in op]
    torch.testing.assert_close(bf16_out, fp32_out, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(bf16_grad, fp32_grad, atol=3e-2, rtol=3e-2)

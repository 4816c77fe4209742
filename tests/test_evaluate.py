"""What training needs from evaluation: the masked loss, padding-invariant split loss, and a
module that stays below the commands (it imports search, never translate or a concrete model)."""

from __future__ import annotations

import ast
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F

from nmt.config import ModelConfig
from nmt.evaluate import corpus_scores, cross_entropy_sum, split_loss
from nmt.models import build_model
from nmt.vocab import PAD_ID

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_cross_entropy_sum_ignores_padding_and_smooths_labels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 9, generator=generator, dtype=torch.bfloat16)
    tgt_out = torch.tensor([[5, 6, 7, 3], [8, 3, PAD_ID, PAD_ID]])
    real = tgt_out != PAD_ID
    expected = -logits.float().log_softmax(-1).gather(-1, tgt_out[..., None])[..., 0][real].sum()
    loss = cross_entropy_sum(logits, tgt_out)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, expected)
    # whatever the logits at padded positions say, the loss is the same
    noisy = logits.clone()
    noisy[~real] = 100.0
    torch.testing.assert_close(cross_entropy_sum(noisy, tgt_out), expected)
    smoothed = cross_entropy_sum(logits, tgt_out, label_smoothing=0.1)
    reference = F.cross_entropy(
        logits.float()[real], tgt_out[real], label_smoothing=0.1, reduction="sum"
    )
    torch.testing.assert_close(smoothed, reference)
    assert float(smoothed) != pytest.approx(float(expected))


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_split_loss_is_the_same_however_the_split_is_batched_and_padded(arch: str):
    torch.manual_seed(0)
    model_cfg = ModelConfig(arch=arch, embed_size=16, hidden_size=16, attention_size=16,
                            ffn_size=32, num_heads=2, num_encoder_layers=1,
                            num_decoder_layers=1, dropout=0.0)  # fmt: skip
    model = build_model(model_cfg, 20, 20)
    generator = torch.Generator().manual_seed(1)
    lengths = [(3, 5), (9, 7), (1, 2), (6, 6), (4, 8)]
    rows = {"src_ids": [], "tgt_ids": [], "src_len": [], "tgt_len": []}
    for src_len, tgt_len in lengths:
        rows["src_ids"].append(torch.randint(4, 20, (src_len,), generator=generator).tolist())
        rows["tgt_ids"].append(torch.randint(4, 20, (tgt_len,), generator=generator).tolist())
        rows["src_len"].append(src_len)
        rows["tgt_len"].append(tgt_len)
    split = datasets.Dataset.from_dict(rows)
    settings = {"device": torch.device("cpu"), "precision": torch.float32}
    one_batch = split_loss(model, split, **settings, max_tokens=10_000, pad_multiple=8)
    many_batches = split_loss(model, split, **settings, max_tokens=24, pad_multiple=1)
    assert one_batch == pytest.approx(many_batches, rel=1e-5)
    assert 0 < one_batch < 2 * torch.log(torch.tensor(20.0))  # per token, near log V untrained


def test_corpus_scores_carry_signatures():
    scores = corpus_scores(["a cat sat on the mat ."], ["a cat sat on the mat ."])
    assert scores.bleu == pytest.approx(100.0) and scores.chrf == pytest.approx(100.0)
    assert "case:mixed" in scores.bleu_signature and "case:lc" in scores.bleu_lc_signature


@pytest.mark.parametrize("module", ["evaluate", "search"])
def test_library_modules_import_nothing_above_them(module: str):
    # Training imports these: they must not pull in the commands, or a concrete model.
    tree = ast.parse((REPO_ROOT / "nmt" / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    forbidden = {"nmt.translate", "nmt.translator", "nmt.cli", "nmt.train", "nmt.models",
                 "nmt.models.rnn", "nmt.models.transformer"}  # fmt: skip
    assert not imported & forbidden

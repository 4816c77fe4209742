"""Building models: configs, errors, parameter counts, FLOPs, and the import boundary."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nmt.config import ModelConfig, model_config
from nmt.models import build_model, count_parameters, model_summary

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIGS = sorted((REPO_ROOT / "configs/model").glob("*.yaml"))


def test_unknown_arch_is_rejected_by_name(tiny_model_config: ModelConfig) -> None:
    with pytest.raises(ValueError, match=r"model\.arch='lstm'.*rnn.*transformer"):
        build_model(replace(tiny_model_config, arch="lstm"), 40, 40)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"arch": "rnn", "rnn_type": "elman"}, "model.rnn_type"),
        ({"arch": "transformer", "num_heads": 5}, "model.num_heads"),
    ],
)
def test_bad_sizes_are_rejected_by_name(
    overrides: dict, key: str, tiny_model_config: ModelConfig
) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(replace(tiny_model_config, **overrides), 40, 40)


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_tied_embeddings_need_a_joint_vocabulary(arch: str, tiny_model_config: ModelConfig) -> None:
    tied = replace(tiny_model_config, arch=arch, tie_embeddings=True)
    with pytest.raises(ValueError, match=r"model\.tie_embeddings"):
        build_model(tied, 40, 41)
    model = build_model(tied, 40, 40)
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    untied = build_model(replace(tied, tie_embeddings=False), 40, 41)
    assert untied.output.weight.shape[0] == 41


def test_transformer_checkpoints_from_before_residual_modules_still_load(
    tiny_model_config: ModelConfig,
) -> None:
    """A layer's sublayer norms were `norms.{i}` before `Residual` held them (`residuals.{i}.norm`);
    state dicts of either layout load, strictly, into the same parameters."""
    cfg = replace(tiny_model_config, arch="transformer", norm_first=False)
    torch.manual_seed(0)
    saved = build_model(cfg, 40, 40).state_dict()
    legacy = {re.sub(r"residuals\.(\d+)\.norm\.", r"norms.\1.", k): v for k, v in saved.items()}
    assert "decoder.layers.1.norms.2.bias" in legacy
    torch.manual_seed(1)
    model = build_model(cfg, 40, 40)
    model.load_state_dict(legacy)
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda path: path.stem)
def test_every_model_config_builds(path: Path) -> None:
    cfg = model_config(path.stem)
    model = build_model(cfg, 500, 500)
    assert sum(count_parameters(model).values()) == sum(p.numel() for p in model.parameters())


def test_transformer_base_has_the_papers_size() -> None:
    """Vaswani et al. (2017), Table 3: the base model with a shared 37k vocabulary has 65M."""
    cfg = model_config("transformer_base")
    vocab, d, f = 37_000, cfg.hidden_size, cfg.ffn_size
    attention = 4 * (d * d + d)  # W^Q, W^K, W^V, W^O with biases
    ffn = d * f + f + f * d + d
    norm = 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    expected = (
        vocab * d  # one embedding matrix: source, target and output (tied)
        + cfg.num_encoder_layers * encoder_layer
        + cfg.num_decoder_layers * decoder_layer
        + 2 * norm  # the final LayerNorm of each stack (pre-norm)
    )
    counts = count_parameters(build_model(cfg, vocab, vocab))
    assert sum(counts.values()) == expected == 63_084_544
    assert abs(expected / 65e6 - 1) < 0.05
    assert set(counts) == {"src_embed", "encoder", "decoder"}  # tgt_embed, output: shared


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize(
    "overrides",
    [
        {"arch": "rnn", "rnn_type": "gru"},
        {"arch": "rnn", "rnn_type": "lstm", "tie_embeddings": False},
        {"arch": "transformer"},
    ],
    ids=["rnn-gru", "rnn-lstm", "transformer"],
)
def test_flops_formula_matches_a_flop_counter(
    overrides: dict, tiny_model_config: ModelConfig
) -> None:
    """The analytic count against PyTorch's count of the matrix products actually run."""
    torch.manual_seed(0)
    model = build_model(replace(tiny_model_config, **overrides), 1000, 1000)
    batch, src_len, tgt_len = 4, 9, 6
    src = torch.randint(4, 1000, (batch, src_len))
    tgt_in = torch.randint(4, 1000, (batch, tgt_len))
    # The math SDPA backend and plain (non-oneDNN) LSTM run as matmuls the counter can see.
    with (
        torch.backends.mkldnn.flags(enabled=False),
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False) as counter,
    ):
        model(src, torch.ones_like(src, dtype=torch.bool), tgt_in).logits.sum().backward()
    measured = counter.get_total_flops() / (batch * tgt_len)
    summary = model_summary(model, src_len, tgt_len)
    assert summary.flops_per_token == pytest.approx(measured, rel=0.02)
    assert summary.num_parameters == sum(p.numel() for p in model.parameters())
    assert "FLOPs per target token" in str(summary)


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a source file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_model_builder_imports_concrete_models() -> None:
    concrete = {"nmt.models.rnn", "nmt.models.transformer"}
    allowed = {REPO_ROOT / "nmt/models/__init__.py"}
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(_imported_modules(path) & concrete)
        for path in sorted((REPO_ROOT / "nmt").rglob("*.py"))
        if path not in allowed
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    assert _imported_modules(REPO_ROOT / "nmt/models/__init__.py") >= concrete  # test sees them

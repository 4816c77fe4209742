"""Every shipped config composes onto the typed schema; mistakes fail at composition."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from nmt.config import CONFIG_DIR, Config, DataConfig, ModelConfig, from_dict, to_config

GROUPS = ("data", "model", "train", "decode", "experiment")
# Options that need a setting of the user's to be complete.
REQUIRED = {("data", "local_files"): ["data.root=/corpora/pair"]}


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="config", overrides=overrides)


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in GROUPS for option in options(group)]
)
def test_every_option_composes_to_typed_config(group: str, option: str):
    cfg = to_config(compose_config([f"{group}={option}", *REQUIRED.get((group, option), [])]))
    assert isinstance(cfg, Config) and isinstance(cfg.data, DataConfig)
    assert isinstance(cfg.model, ModelConfig)
    if group == "data":
        assert cfg.data.name == option


def test_names_scripts_rely_on_exist():
    assert {"multi30k_de_en", "multi30k_en_de", "multi30k_en_fr", "local_files"} <= set(
        options("data")
    )
    assert {"rnn_bahdanau", "transformer_small", "transformer_base"} <= set(options("model"))
    assert "smoke" in options("experiment")


def test_defaults_and_directions():
    cfg = to_config(compose_config([]))
    assert (cfg.data.src_lang, cfg.data.tgt_lang) == ("de", "en")
    assert cfg.model.arch == "transformer" and cfg.name == "transformer_multi30k_de_en"
    assert cfg.data.root.endswith("shared/data/multi30k") and cfg.data.max_train_pairs is None
    en_de = to_config(compose_config(["data=multi30k_en_de", "model=rnn_bahdanau"]))
    assert (en_de.data.src_lang, en_de.data.tgt_lang) == ("en", "de")
    assert en_de.name == "rnn_multi30k_en_de"


def test_data_root_follows_environment_then_override(monkeypatch):
    monkeypatch.setenv("NMT_DATA_DIR", "/mnt/m30k")
    assert to_config(compose_config([])).data.root == "/mnt/m30k"
    assert to_config(compose_config(["data.root=/x"])).data.root == "/x"


def test_experiment_overrides_groups_and_name():
    cfg = to_config(compose_config(["experiment=smoke"]))
    assert cfg.name == "smoke" and cfg.train.device == "cpu" and cfg.model.hidden_size == 64
    assert cfg.data.max_train_pairs == 2000


@pytest.mark.parametrize(
    "override",
    ["train.max_stepz=10", "train.max_steps=ten", "model=no_such_model", "data.spm.joint=maybe"],
)
def test_typos_and_wrong_types_fail_at_composition(override: str):
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


def test_local_files_requires_a_root():
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue):
        to_config(compose_config(["data=local_files"]))


def test_saved_config_round_trips():
    cfg = to_config(compose_config(["model=rnn_bahdanau", "train.max_steps=7"]))
    import dataclasses

    again = from_dict(dataclasses.asdict(cfg))
    assert again == cfg

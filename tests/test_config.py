"""Every shipped config composes onto the typed schema and passes its checks; mistakes
(misspelt or unknown keys, wrong types, values out of range) fail before any work."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from nmt.config import (
    CONFIG_DIR,
    Config,
    DataConfig,
    ModelConfig,
    check_config,
    from_dict,
    to_config,
)
from nmt.config_checks import RULES
from nmt.errors import UserError

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
    check_config(cfg)  # to_config checks too; this says so where the reader looks
    if group == "data":
        assert cfg.data.name == option


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_passes_the_checks_with_every_model(experiment: str, model: str):
    # An experiment's sizes (heads, layers) must also fit a model option it may be paired with.
    check_config(to_config(compose_config([f"experiment={experiment}", f"model={model}"])))


def test_schema_defaults_pass_the_checks():
    check_config(Config())


def test_every_rule_names_an_existing_setting_of_the_right_kind():
    # A rule for a renamed setting would fail on every config; one that allows null must be
    # for a setting that can be null, and say what null means.
    for key, _, null_means in RULES:
        section, _, name = key.rpartition(".")
        schema = type(functools.reduce(getattr, section.split("."), Config()))
        field_types = {field.name: str(field.type) for field in dataclasses.fields(schema)}
        assert name in field_types, key
        assert ("None" in field_types[name]) == bool(null_means), key


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


def test_plain_train_runs_the_headline_recipe():
    # `make train` with no ARGS is the best de->en recipe; the experiment file spells it out
    plain = to_config(compose_config([]))
    headline = to_config(compose_config(["experiment=transformer_multi30k_de_en"]))
    assert plain == headline
    assert plain == Config(data=plain.data, name=plain.name)  # and so are the schema defaults
    assert (plain.model.hidden_size, plain.train.schedule, plain.train.average_last) == (
        128, "linear", 5)  # fmt: skip


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


# (override, what the one-line message must say, or None for a value at the edge that is fine).
OUT_OF_RANGE = [
    ("train.lr=0", "train.lr=0.0 is out of range: set train.lr to a number > 0"),
    ("train.lr=-1e-3", "train.lr=-0.001 is out of range"),
    (
        "model.dropout=1.0",
        "model.dropout=1.0 is out of range: set model.dropout to a number in [0, 1)",
    ),
    ("model.dropout=-0.1", "model.dropout=-0.1 is out of range"),
    ("model.attention_dropout=1", "model.attention_dropout=1.0 is out of range"),
    ("train.label_smoothing=1", "train.label_smoothing=1.0 is out of range"),
    (
        "train.accumulate=0",
        "train.accumulate=0 is out of range: set train.accumulate to a number >= 1",
    ),
    ("train.validate_every=0", "train.validate_every=0 is out of range"),
    ("train.log_every=0", "train.log_every=0 is out of range"),
    ("train.valid_beam_size=0", "train.valid_beam_size=0 is out of range"),
    ("model.hidden_size=0", "model.hidden_size=0 is out of range"),
    ("model.embed_size=0", "model.embed_size=0 is out of range"),
    ("model.ffn_size=0", "model.ffn_size=0 is out of range"),
    ("model.attention_size=0", "model.attention_size=0 is out of range"),
    ("model.num_heads=0", "model.num_heads=0 is out of range"),
    ("model.num_encoder_layers=0", "model.num_encoder_layers=0 is out of range"),
    ("model.num_decoder_layers=-1", "model.num_decoder_layers=-1 is out of range"),
    ("data.spm.vocab_size=0", "data.spm.vocab_size=0 is out of range"),
    ("data.spm.character_coverage=0", "set data.spm.character_coverage to a number in (0, 1]"),
    ("data.spm.character_coverage=1.01", "data.spm.character_coverage=1.01 is out of range"),
    ("data.max_train_pairs=0", "set data.max_train_pairs to a number >= 1, or null for all pairs"),
    ("train.max_steps=0", "train.max_steps=0 is out of range"),
    ("train.max_epochs=0", "or null for no epoch limit"),
    ("train.max_time=0", "train.max_time=0.0 is out of range: set train.max_time to a number > 0"),
    ("train.warmup_steps=-1", "train.warmup_steps=-1 is out of range"),
    ("train.max_tokens=0", "train.max_tokens=0 is out of range"),
    ("train.keep_last=0", "train.keep_last=0 is out of range"),
    ("train.patience=0", "or null for no early stopping"),
    ("train.max_valid_sentences=4", None),  # in range: 1 and above are fine
    ("train.max_valid_sentences=0", "or null for the whole validation split"),
    ("train.num_heatmaps=-1", "train.num_heatmaps=-1 is out of range"),
    ("train.max_nonfinite=0", "train.max_nonfinite=0 is out of range"),
    ("train.clip_norm=-1", "train.clip_norm=-1.0 is out of range"),
    ("train.clip_norm=0", None),  # 0 turns clipping off
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1 is out of range"),
    ("decode.beam_size=0", "decode.beam_size=0 is out of range"),
    ("decode.nbest=6", None),  # translate's typed key over a checkpoint's beam; train refuses it
    ("decode.nbest=0", "decode.nbest=0 is out of range"),
    ("decode.length_penalty=-1", "decode.length_penalty=-1.0 is out of range"),
    ("decode.max_len_a=-0.5", "decode.max_len_a=-0.5 is out of range"),
    ("decode.max_sentences=0", "decode.max_sentences=0 is out of range"),
    ("translate.max_tokens=2", "set translate.max_tokens to a number >= 3"),
    ("translate.max_tokens=3", None),
    (
        "train.device=gpu",
        "train.device=gpu is not a choice: set train.device to one of auto, cpu, cuda",
    ),
    ("train.precision=fp8", "one of auto, fp32, bf16, fp16"),
    ("train.schedule=cosine", "one of inverse_sqrt, linear, plateau, constant"),
    (
        "model.arch=lstm",
        "model.arch=lstm is not a choice: set model.arch to one of transformer, rnn",
    ),
    ("model.rnn_type=elman", "one of gru, lstm"),
    ("data.format=csv", "one of text, tsv, hub"),
    ("data.clean.normalization=NFX", "one of NFC, NFKC, NFD, NFKD, none"),
    ("data.clean.on_decode_error=ignore", "one of error, replace"),
    ("data.spm.model_type=wordpiece", "one of bpe, unigram, char, word"),
    ("model.num_heads=3", "model.hidden_size=128 is not divisible by model.num_heads=3"),
    ("data.spm.joint=false", "model.tie_embeddings=true shares one embedding table"),
    ("train.schedule=linear", None),  # the default max_epochs is a budget to decay over
    ("model.dropout=0", None),
    ("train.label_smoothing=0", None),
    ("train.warmup_steps=0", None),
    ("train.num_heatmaps=0", None),
    ("data.spm.character_coverage=1", None),
    ("decode.length_penalty=0", None),
    ("decode.max_len_a=0", None),
    ("decode.nbest=5", None),
    ("data.spm.model_type=char", None),
    ("translate.alignment_heads=[0,2]", None),
    ("translate.alignment_heads=[]", "translate.alignment_heads=[] must list distinct head"),
    ("translate.alignment_heads=[1,1]", "translate.alignment_heads=[1, 1] must list distinct"),
    ("translate.alignment_heads=[-1]", "translate.alignment_heads=[-1] must list distinct"),
]


@pytest.mark.parametrize(("override", "message"), OUT_OF_RANGE)
def test_settings_out_of_range_are_one_line_errors(override: str, message: str | None):
    dict_cfg = compose_config([override])
    if message is None:
        to_config(dict_cfg)
        return
    with pytest.raises(UserError) as error:
        to_config(dict_cfg)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_linear_schedule_needs_a_budget():
    overrides = ["train.schedule=linear", "train.max_epochs=null"]
    with pytest.raises(UserError, match=r"train\.schedule=linear decays to zero"):
        to_config(compose_config(overrides))
    to_config(compose_config([*overrides, "train.max_time=5"]))


def test_tsv_columns_must_be_two():
    overrides = ["data=local_files", "data.root=/x", "data.format=tsv", "data.tsv_columns=[0]"]
    with pytest.raises(UserError, match=r"data\.tsv_columns=\[0\] must name two columns"):
        to_config(compose_config(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+train.max_step=60",
            "setting train.max_step does not exist: did you mean train.max_steps?",
        ),
        (
            "+model.drop_out=0.2",
            "setting model.drop_out does not exist: did you mean model.dropout?",
        ),
        (
            "+train.beam_size=4",
            "setting train.beam_size does not exist: did you mean decode.beam_size?",
        ),
        ("+dat.root=/x", "setting dat does not exist: did you mean data?"),
        ("+data.spm.zzz=1", "setting data.spm.zzz does not exist: remove it (the keys of data.spm"),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_key(override: str, message: str):
    with pytest.raises(UserError) as error:
        to_config(compose_config([override]))
    assert str(error.value).startswith(message)


def test_a_config_built_in_python_is_checked_on_request():
    cfg = Config(train=dataclasses.replace(Config().train, max_valid_sentences=0))
    assert to_config(cfg) is cfg  # typed objects pass through; the trainer checks them
    with pytest.raises(UserError, match=r"train\.max_valid_sentences=0 is out of range"):
        check_config(cfg)


def test_saved_config_with_keys_this_version_lacks_still_loads():
    saved = dataclasses.asdict(to_config(compose_config([])))
    saved["translate"]["retired_setting"] = 1
    saved["train"]["patience"] = 0  # out of range today, but the run that saved it is history
    cfg = from_dict(saved)
    assert cfg.train.patience == 0 and not hasattr(cfg.translate, "retired_setting")
    assert "retired_setting" in saved["translate"]  # the caller's dict is left alone


def run_nmt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nmt", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


# Through `nmt data`, which imports the least: every command checks the whole config.
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+train.max_step=60",
            "setting train.max_step does not exist: did you mean train.max_steps?",
        ),
        ("train.lr=0", "train.lr=0.0 is out of range: set train.lr to a number > 0"),
    ],
)
def test_command_line_mistakes_are_one_line(override: str, message: str, tmp_path: Path):
    result = run_nmt("data", override, f"data.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"nmt: error: {message}"
    assert not (tmp_path / "cache").exists()  # stopped before any work

"""Checks that a composed configuration makes sense, run before any work starts.

The schemas in `nmt.config` catch wrong types; these catch values of the right type that no
run can use (a negative learning rate, dropout of 1, an unknown scheduler, a misspelt key added
with `+`), each as one `UserError` line that names the key, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable
from typing import Any

from nmt.errors import UserError

# `cfg` below is an `nmt.config.Config`; this module sits under `nmt.config`, which calls it
# from `to_config`, so it reads settings by their dotted keys instead of importing the schema.
ConfigLike = Any

# The values every string-valued choice accepts; the modules that act on them may import these.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("text", "tsv", "hub"),
    "data.clean.normalization": ("NFC", "NFKC", "NFD", "NFKD", "none"),
    "data.clean.on_decode_error": ("error", "replace"),
    # All four SentencePiece algorithms train and round-trip here; `word` needs text whose
    # words are separated by spaces, `char` ignores the vocabulary size beyond the characters.
    "data.spm.model_type": ("bpe", "unigram", "char", "word"),
    "model.arch": ("transformer", "rnn"),
    "model.rnn_type": ("gru", "lstm"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.schedule": ("inverse_sqrt", "linear", "plateau", "constant"),
    "translate.device": ("auto", "cpu", "cuda"),
    "translate.precision": ("auto", "fp32", "bf16", "fp16"),
    "translate.engine": ("torch", "ctranslate2"),
    "export.quantization": ("none", "int8", "int8_float32", "float16"),
}

# `datasets`' builders that read local files (`data.hub_path=json` with `data.hub_data_files`):
# their files are keyed on name, size and mtime like text files, not on a hub revision.
LOCAL_BUILDERS = ("json", "csv", "parquet", "arrow")

# A test on a value and the words that say what passes it ("a number >= 1").
Check = tuple[Callable[[Any], bool], str]


def at_least(low: int) -> Check:
    return (lambda value: value >= low), f"a number >= {low}"


def above(low: float) -> Check:
    return (lambda value: value > low), f"a number > {low}"


def fraction(*, one: bool = False) -> Check:
    """[0, 1) for probabilities such as dropout (1 would drop everything); (0, 1] if `one`."""
    if one:
        return (lambda value: 0 < value <= 1), "a number in (0, 1]"
    return (lambda value: 0 <= value < 1), "a number in [0, 1)"


def one_of(key: str) -> Check:
    return (lambda value: value in CHOICES[key]), f"one of {', '.join(CHOICES[key])}"


# Sizes and counts of the model, each at least 1.
_MODEL_SIZES = ("embed_size", "hidden_size", "num_heads", "ffn_size", "attention_size")
_MODEL_SIZES += ("num_encoder_layers", "num_decoder_layers", "max_positions")

# (key, check, what null means where the schema allows null). A null value always passes: the
# schema has already refused null for the keys that cannot be null.
RULES: list[tuple[str, Check, str]] = [
    *[(key, one_of(key), "") for key in CHOICES],
    ("data.max_train_pairs", at_least(1), "all pairs"),
    ("data.num_proc", at_least(1), ""),
    ("data.clean.max_chars", at_least(1), ""),
    ("data.clean.max_ratio", at_least(1), ""),  # longer/shorter is never below 1
    ("data.clean.ratio_min_chars", at_least(0), ""),
    ("data.clean.max_non_letter", fraction(one=True), ""),
    ("data.spm.vocab_size", at_least(5), ""),  # 4 special pieces and one more
    ("data.spm.character_coverage", fraction(one=True), ""),
    ("data.spm.input_sentence_size", at_least(0), ""),  # SentencePiece reads 0 as "all"
    *[(f"model.{key}", at_least(1), "") for key in _MODEL_SIZES],
    ("model.dropout", fraction(), ""),
    ("model.attention_dropout", fraction(), ""),
    ("train.max_steps", at_least(1), "no step limit"),
    ("train.max_epochs", at_least(1), "no epoch limit"),
    ("train.max_time", above(0), "no time limit"),
    ("train.max_tokens", at_least(1), ""),
    ("train.accumulate", at_least(1), ""),
    ("train.lr", above(0), ""),
    ("train.warmup_steps", at_least(0), ""),
    ("train.weight_decay", at_least(0), ""),
    ("train.label_smoothing", fraction(), ""),
    ("train.clip_norm", at_least(0), ""),  # 0 turns clipping off
    ("train.pad_multiple", at_least(1), "8 on CUDA, 1 on CPU"),
    ("train.validate_every", at_least(1), ""),
    ("train.valid_beam_size", at_least(1), ""),
    ("train.max_valid_sentences", at_least(1), "the whole validation split"),
    ("train.num_heatmaps", at_least(0), ""),
    ("train.patience", at_least(1), "no early stopping"),
    ("train.keep_last", at_least(1), ""),
    ("train.average_last", at_least(0), ""),
    ("train.log_every", at_least(1), ""),
    ("train.max_nonfinite", at_least(1), ""),
    ("decode.beam_size", at_least(1), ""),
    ("decode.length_penalty", at_least(0), ""),
    ("decode.max_len_a", at_least(0), ""),
    ("decode.max_sentences", at_least(1), ""),
    ("decode.temperature", above(0), ""),
    ("decode.top_k", at_least(0), ""),
    ("decode.top_p", fraction(one=True), ""),
    ("translate.max_tokens", at_least(3), ""),  # a 1-subword source, its EOS, a target slot
    ("translate.chunk_lines", at_least(1), ""),
]


def check_config(cfg: ConfigLike) -> None:
    """Raise a one-line `UserError` for the first setting that is out of range."""
    for key, (passes, requirement), null_means in RULES:
        value = _get(cfg, key)
        if value is not None and not passes(value):
            problem = "is not a choice" if isinstance(value, str) else "is out of range"
            alternative = f", or null for {null_means}" if null_means else ""
            raise UserError(
                f"{key}={_show(value)} {problem}: set {key} to {requirement}{alternative}"
            )
    _check_combinations(cfg)


def check_search(decode: Any) -> None:
    """decode.nbest within the beam, for settings a search will run with: a training config's
    (saved in its checkpoints). Not part of `check_config`, which also sees the composed
    defaults of translate and evaluate, where only typed keys replace the checkpoint's
    settings: those are checked once merged (`nmt.translator.resolve_decode`)."""
    if not decode.sample and decode.nbest > decode.beam_size:
        raise UserError(
            f"decode.nbest={decode.nbest} is out of range: set decode.nbest between 1 and "
            f"decode.beam_size={decode.beam_size} (hypotheses come from the beam)"
        )


def _check_combinations(cfg: ConfigLike) -> None:
    """Settings that are each fine but do not go together."""
    _check_translate(cfg.translate)
    decode, model = cfg.decode, cfg.model
    if decode.sample and decode.nbest < 1:
        raise UserError(f"decode.nbest={decode.nbest} is out of range: set decode.nbest to 1 or "
                        "more (the samples drawn per sentence)")  # fmt: skip
    if not decode.sample and decode.nbest < 1:
        raise UserError(f"decode.nbest={decode.nbest} is out of range: set decode.nbest to 1 or "
                        "more (at most decode.beam_size)")  # fmt: skip
    if model.arch == "transformer" and model.hidden_size % model.num_heads:
        raise UserError(
            f"model.hidden_size={model.hidden_size} is not divisible by model.num_heads="
            f"{model.num_heads}: make hidden_size a multiple of num_heads"
        )
    if model.tie_embeddings and not cfg.data.spm.joint:
        # Separate SentencePiece models of equal size would pass the models' own size check
        # and tie the embeddings of two unrelated vocabularies.
        raise UserError(
            "model.tie_embeddings=true shares one embedding table between source and target, "
            "but data.spm.joint=false trains two vocabularies: set model.tie_embeddings=false "
            "or data.spm.joint=true"
        )
    if cfg.data.format == "tsv" and len(cfg.data.tsv_columns) != 2:
        raise UserError(
            f"data.tsv_columns={cfg.data.tsv_columns} must name two columns, source then "
            "target: e.g. data.tsv_columns=[0,1]"
        )
    _check_sources(cfg.data)
    train = cfg.train
    if train.schedule == "linear" and train.max_steps is train.max_epochs is train.max_time is None:
        raise UserError(
            "train.schedule=linear decays to zero at the end of the budget: set "
            "train.max_steps, train.max_epochs or train.max_time"
        )
    if train.average_last > train.keep_last:
        raise UserError(
            f"train.average_last={train.average_last} averages the last step checkpoints, but "
            f"train.keep_last={train.keep_last} keeps fewer: set train.keep_last to at least "
            f"{train.average_last}"
        )
    heads = cfg.translate.alignment_heads
    if heads is not None and (not heads or min(heads) < 0 or len(set(heads)) < len(heads)):
        raise UserError(
            f"translate.alignment_heads={list(heads)} must list distinct head numbers from 0, "
            "e.g. [0,2], or be null for the mean of all heads"
        )


def _check_translate(translate: ConfigLike) -> None:
    """What the CTranslate2 engine cannot honour: it runs one exported model and returns no
    attention."""
    if translate.engine != "ctranslate2":
        return
    if translate.ensemble:
        raise UserError(
            "translate.ensemble averages nmt checkpoints: leave it out with "
            "translate.engine=ctranslate2, which runs one exported model"
        )
    for key in ("attention_dir", "alignments"):
        if getattr(translate, key):
            raise UserError(
                f"translate.{key} reads nmt's own attention: leave it out with "
                "translate.engine=ctranslate2, or translate the checkpoint with "
                "translate.engine=torch"
            )


def _check_sources(data: ConfigLike) -> None:
    """Each of `data.train_sources` named once, with a format and sizes that can be read."""
    names = [source.name for source in data.train_sources]
    for index, source in enumerate(data.train_sources):
        key = f"data.train_sources[{index}]"
        if not source.name or source.name in names[:index]:
            raise UserError(
                f"{key}.name={_show(source.name)} must be a unique, non-empty name: the "
                "statistics and error messages tell the sources apart by it"
            )
        formats = CHOICES["data.format"]
        if source.format is not None and source.format not in formats:
            raise UserError(f"{key}.format={source.format} is not a choice: set it to one of "
                            f"{', '.join(formats)}, or null for data.format")  # fmt: skip
        if source.tsv_columns is not None and len(source.tsv_columns) != 2:
            raise UserError(f"{key}.tsv_columns={source.tsv_columns} must name two columns, "
                            "source then target: e.g. [0,1]")  # fmt: skip
        if source.max_pairs is not None and source.max_pairs < 1:
            raise UserError(f"{key}.max_pairs={source.max_pairs} is out of range: set it to "
                            "a number >= 1, or null for all pairs")  # fmt: skip


def unknown_key(values: dict, schema: type) -> str | None:
    """The first key of the nested dict `values` that the dataclass `schema` lacks, as
    `"setting <key> does not exist: <hint>"`, or None.

    Hydra refuses `train.max_step=1` but accepts `+train.max_step=1` (its own hint for a
    misspelt key), which would otherwise be ignored without a word.
    """
    return _first_unknown(values, schema, "", _all_keys(schema))


def _first_unknown(values: dict, schema: type, prefix: str, every_key: list[str]) -> str | None:
    types = typing.get_type_hints(schema)
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in types:
            match = _closest(path, prefix, every_key)
            if match:
                return f"setting {path} does not exist: did you mean {match}?"
            section = f"{prefix.rstrip('.')} are" if prefix else "the top level are"
            return (
                f"setting {path} does not exist: remove it (the keys of {section} the fields "
                f"of {schema.__name__} in nmt/config.py)"
            )
        nested = _dataclass_in(types[key])
        if nested is not None and isinstance(value, dict):
            found = _first_unknown(value, nested, f"{path}.", every_key)
            if found:
                return found
    return None


def _closest(path: str, prefix: str, every_key: list[str]) -> str | None:
    """The key whose last part is spelt most like `path`'s, anywhere in the schema (so that
    `train.beam_size` finds `decode.beam_size`), a key of the same section winning a tie."""
    name = path.rsplit(".", 1)[-1]

    def likeness(key: str) -> float:
        same_section = key.startswith(prefix) and "." not in key[len(prefix) :]
        return difflib.SequenceMatcher(None, name, key.rsplit(".", 1)[-1]).ratio() + (
            0.01 if same_section else 0.0
        )

    best = max(every_key, key=likeness)
    return best if likeness(best) >= 0.6 else None


def drop_unknown(values: dict, schema: type, prefix: str = "") -> list[str]:
    """Delete, in place, the keys of nested dict `values` that `schema` lacks; return them.

    For configs saved by an older nmt (in checkpoints), whose keys may since have moved.
    """
    types = typing.get_type_hints(schema)
    dropped = []
    for key in list(values):
        if key not in types:
            dropped.append(f"{prefix}{key}")
            del values[key]
            continue
        nested = _dataclass_in(types[key])
        if nested is not None and isinstance(values[key], dict):
            dropped += drop_unknown(values[key], nested, f"{prefix}{key}.")
    return dropped


def _all_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of `schema`, sections (`data.spm`) as well as settings."""
    keys = []
    for name, kind in typing.get_type_hints(schema).items():
        keys.append(f"{prefix}{name}")
        nested = _dataclass_in(kind)
        if nested is not None:
            keys.extend(_all_keys(nested, f"{prefix}{name}."))
    return keys


def _dataclass_in(kind: Any) -> type | None:
    """The dataclass a field holds (`X` or `X | None`), or None for any other type."""
    for candidate in (kind, *typing.get_args(kind)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _get(cfg: object, key: str) -> Any:
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


def _show(value: object) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)

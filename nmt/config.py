"""Typed configuration: the dataclass schemas that Hydra's YAML merges onto.

Registering them in Hydra's ConfigStore makes a typo or a wrong type in a YAML file or an
override fail at composition, with Hydra's message, instead of deep inside a run; `to_config`
then refuses keys added with `+` that the schema lacks and values out of range
(`nmt.config_checks`). Library code receives these objects, never a raw `DictConfig`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from nmt.config_checks import check_config, drop_unknown, unknown_key
from nmt.errors import UserError

log = logging.getLogger(__name__)

# The repository's configs/ folder: the YAML options composed onto these schemas.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class CleanConfig:
    """Rules applied to every split before tokenization; each dropped pair is counted by rule."""

    normalization: str = "NFC"  # Unicode form of both sides: NFC | NFKC | NFD | NFKD | none
    max_chars: int = 1000  # drop a pair if either side is longer (characters)
    max_ratio: float = 3.0  # drop a pair if one side is this many times longer than the other
    ratio_min_chars: int = 20  # ...but only judge the ratio once the longer side has this many
    drop_identical: bool = True  # drop a pair whose source equals its target (copied text)
    # Drop a pair if more than this share of either side's non-space characters are not
    # letters (digits, punctuation, symbols: tables, URLs, markup); 1.0 keeps every pair.
    max_non_letter: float = 0.5
    drop_duplicates: bool = False  # keep only the first of exactly equal (normalized) pairs
    on_decode_error: str = "error"  # undecodable bytes: error (name file and line) | replace


@dataclass
class SpmConfig:
    """SentencePiece settings; special ids are fixed in `nmt.tokenizer` so models agree."""

    model_type: str = "bpe"  # bpe | unigram | char | word
    vocab_size: int = 8000
    character_coverage: float = 1.0
    joint: bool = True  # one model for both sides (required for tied src/tgt embeddings)
    byte_fallback: bool = True  # unseen characters become bytes instead of <unk>
    # Sample at most this many sentences to train on. SentencePiece's memory grows faster than
    # the sample: BPE on 1M sentences peaked at 0.56 GB, on 2M at 3.0 GB (bench_data corpus).
    input_sentence_size: int = 1_000_000
    seed: int = 1234


@dataclass
class SourceConfig:
    """One corpus of `data.train_sources`, the several concatenated into the training split.

    A key left null takes the value of the same `data.*` key, so sources in one layout need
    only `name` and `root`; the hub keys are the source's own, since each names one dataset.
    """

    name: str = MISSING  # names the source in the statistics and in error messages
    format: str | None = None  # text | tsv | hub
    root: str | None = None  # text, tsv: the folder holding the files
    split: str | None = None  # the split read from this source; null: data.train_split
    text_pattern: str | None = None
    tsv_pattern: str | None = None
    tsv_columns: list[int] | None = None
    hub_path: str | None = None
    hub_name: str | None = None
    hub_revision: str | None = None
    hub_data_files: dict[str, Any] | None = None
    max_pairs: int | None = None  # only the first N pairs of this source; null for all


@dataclass
class DataConfig:
    """Where a parallel corpus lives and how it becomes cached, SentencePiece-encoded Arrow."""

    name: str = "multi30k_de_en"  # names the cache folder; not part of the fingerprint
    format: str = "text"  # text (one file per side) | tsv (one file, two columns) | hub
    root: str = MISSING  # corpus folder, relative to the working directory; data/*.yaml set it
    src_lang: str = "de"
    tgt_lang: str = "en"
    train_split: str = "train"
    valid_split: str = "val"
    test_splits: list[str] = field(default_factory=lambda: ["test_2016_flickr"])
    # format=text: one file per split and language under root; a .gz suffix is decompressed.
    text_pattern: str = "{split}.{lang}.gz"
    # format=tsv: one file per split, source and target in the given tab-separated columns.
    tsv_pattern: str = "{split}.tsv"
    tsv_columns: list[int] = field(default_factory=lambda: [0, 1])
    # format=hub: `datasets.load_dataset(hub_path, hub_name, revision=hub_revision)` with a
    # `translation` column of {lang: text} dicts (the WMT layout).
    hub_path: str | None = None
    hub_name: str | None = None
    hub_revision: str | None = None
    # For datasets' local builders (hub_path: json | csv | parquet | arrow): split -> file or
    # list of files, e.g. data.hub_data_files.train=train.jsonl. Open to new keys (`_register`).
    hub_data_files: dict[str, Any] | None = field(default_factory=dict)
    max_train_pairs: int | None = None  # use only the first N training pairs; null for all
    # Several corpora concatenated into the training split, in order; empty: the one corpus above.
    train_sources: list[SourceConfig] = field(default_factory=list)
    num_proc: int = 2  # workers for cleaning and encoding splits of >= 50k pairs per worker
    cache_dir: str = "data/cache"
    clean: CleanConfig = field(default_factory=CleanConfig)
    spm: SpmConfig = field(default_factory=SpmConfig)


@dataclass
class ModelConfig:
    """Architecture and sizes; `nmt.models.build_model` is the only reader of `arch`.

    The defaults are `configs/model/transformer_tiny.yaml`, the model of the best de->en recipe
    (README, "Results"): small and heavily regularised, for a corpus of Multi30k's size.
    """

    arch: str = "transformer"  # transformer | rnn
    embed_size: int = 256  # RNN embeddings; the Transformer uses hidden_size (d_model)
    hidden_size: int = 128  # Transformer d_model; RNN hidden size per direction
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dropout: float = 0.3
    tie_embeddings: bool = True  # share source/target/output embeddings (needs a joint vocab)
    # Transformer
    num_heads: int = 4
    ffn_size: int = 256
    attention_dropout: float = 0.0
    norm_first: bool = True  # pre-norm; false gives the paper's post-norm
    learned_positions: bool = False  # sinusoidal positions unless true
    max_positions: int = 1024
    # RNN
    rnn_type: str = "gru"  # gru | lstm
    attention_size: int = 256  # size of the additive attention's hidden layer (v, W_h, W_s)


@dataclass
class TrainConfig:
    """The training loop's settings. The defaults are the best de->en recipe found on val
    (`experiment=transformer_multi30k_de_en`, README "Results"), so plain `make train` runs it."""

    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    seed: int = 1234
    max_steps: int | None = None  # optimiser steps; null for no limit
    max_epochs: int | None = 40
    max_time: float | None = None  # wall-clock budget in minutes; null for no limit
    max_tokens: int = 4096  # token budget per batch (source + target, padded)
    accumulate: int = 1
    lr: float = 5e-3
    warmup_steps: int = 2000
    schedule: str = "linear"  # linear (to 0 at the budget) | inverse_sqrt | plateau | constant
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    compile: bool = False
    # Pad batch lengths to a multiple: tensor-core-friendly shapes and few shapes for compiled
    # kernels on a GPU, but only wasted compute on a CPU. null: 8 on CUDA, 1 elsewhere (a resumed
    # run keeps what it started with).
    pad_multiple: int | None = None
    validate_every: int = 500  # steps; validation also runs at each epoch end
    valid_beam_size: int = 1  # search used for validation BLEU (1 = greedy)
    max_valid_sentences: int | None = None  # validate on the first N sentences; null for all
    num_heatmaps: int = 3  # validation sentences whose attention goes to TensorBoard
    patience: int | None = None  # validations without BLEU gain before stopping; null: never
    keep_last: int = 5  # step checkpoints kept besides best.pt
    # At the end of a run, average the parameters of the last N step checkpoints, validate the
    # average, and make it the run's model (averaged.pt) if it beats best.pt; 0 or 1: off.
    average_last: int = 5
    log_every: int = 100  # steps between TensorBoard scalar writes
    max_nonfinite: int = 10  # consecutive non-finite losses tolerated before stopping
    resume: bool = True  # from the run directory's latest checkpoint; false: refuse a dir with one


@dataclass
class DecodeConfig:
    """Search settings. Training validates with them and saves them in its checkpoints;
    `nmt translate` and `nmt evaluate` decode with the checkpoint's, replacing only the keys
    typed on their command line."""

    beam_size: int = 5  # 1 = greedy search
    length_penalty: float = 1.2  # GNMT alpha, chosen on de->en val for the default recipe; 0: off
    max_len_a: float = 1.5  # max output length = a * source length + b
    max_len_b: int = 10
    max_sentences: int = 64  # most sentences per search batch (translate.max_tokens also bounds it)
    nbest: int = 1  # hypotheses kept per sentence, best first (at most beam_size; samples)
    sample: bool = False  # draw outputs at random instead of searching (back-translation)
    temperature: float = 1.0  # sample: divides the log-probabilities (> 1 flatter, < 1 peakier)
    top_k: int = 0  # sample: draw among the k most probable tokens only; 0 = all
    top_p: float = 1.0  # sample: draw from the smallest set of tokens holding this probability
    seed: int = 0  # sample: the same seed, input and settings give the same samples


@dataclass
class TranslateConfig:
    """`nmt translate` and `nmt evaluate`: which checkpoint, on what, and what to read and write."""

    ckpt: str | None = None  # a checkpoint file, or a run directory (its kept model)
    input: str | None = None  # translate: a text file, one sentence a line; null for stdin
    output: str | None = None  # translate: the file to write; null for stdout
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    max_tokens: int = 8192  # source tokens per batch (sentences are sorted by length first)
    chunk_lines: int = 20_000  # input lines read, sorted and translated at a time (streaming)
    strict: bool = False  # bad bytes / control characters: error naming the line, not a warning
    nbest_tsv: str | None = None  # translate: also write the n-best lists (decode.nbest) as TSV
    attention_dir: str | None = None  # translate: one attention heatmap PNG per sentence
    alignments: str | None = None  # translate: word alignments (Pharaoh i-j), a line per line
    # Cross-attention the alignments read (heatmaps too once alignments, a layer or heads are
    # set; else heatmaps draw the last layer's mean): a decoder layer (negative counts from the
    # last; null = the first, best on Multi30k val, see README) and heads (null = all, mean)
    alignment_layer: int | None = None
    alignment_heads: list[int] | None = None
    # torch: translate.ckpt is a checkpoint; ctranslate2: an `nmt export` directory, decoded by
    # CTranslate2 (pip install nmt[ctranslate2]).
    engine: str = "torch"
    # More checkpoints to average with `ckpt` (translate, evaluate, score): the mean of their
    # next-token probabilities; they must share the SentencePiece models.
    ensemble: list[str] = field(default_factory=list)


@dataclass
class EvaluateConfig:
    """`nmt evaluate` only: what to score (the checkpoint and device are `translate.*`)."""

    splits: list[str] | None = None  # default: the checkpoint's validation and test splits
    data_root: str | None = None  # the corpus folder, if not where training read it
    hypotheses: str | None = None  # score this file against `references` instead of a checkpoint
    references: str | None = None


@dataclass
class ScoreConfig:
    """`nmt score` only: the pairs to force-decode (the checkpoint and device are `translate.*`)."""

    source: str | None = None  # source sentences, one a line
    target: str | None = None  # their targets, line for line
    tsv: str | None = None  # instead of source/target: one `source<TAB>target` pair a line
    output: str | None = None  # `logprob<TAB>avg<TAB>tokens` a pair; null for stdout


@dataclass
class ExportConfig:
    """`nmt export`: a Transformer checkpoint (`translate.ckpt`) as a CTranslate2 model folder."""

    output: str | None = None  # the folder to write (a previous export there is replaced)
    # Weights as saved: none (float32) | int8 | int8_float32 | float16 (CTranslate2's names).
    quantization: str = "none"


@dataclass
class Config:
    """The whole composed configuration of one run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    name: str = "default"  # experiment name; runs go to runs/<name>/<timestamp>


def _register() -> None:
    store = ConfigStore.instance()
    schema = OmegaConf.structured(Config)
    # Hydra closes every dict to new keys, and its fix (`+data.hub_data_files.train=...`) fails
    # once a config file has set that key: this one dict stays open to plain overrides.
    OmegaConf.set_struct(schema.data.hub_data_files, False)
    store.store(name="config_schema", node=schema)
    for group, schema in (
        ("data", DataConfig),
        ("model", ModelConfig),
        ("train", TrainConfig),
        ("decode", DecodeConfig),
    ):
        store.store(group=group, name=f"{group}_schema", node=schema)


def model_config(name: str) -> ModelConfig:
    """The typed `configs/model/<name>.yaml` (for scripts and tests outside Hydra)."""
    path = CONFIG_DIR / "model" / f"{name}.yaml"
    return OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    )


def to_config(cfg: DictConfig | Config) -> Config:
    """The typed config of a composed `DictConfig`, checked: interpolations resolved, keys the
    schema lacks and settings out of range refused with one `UserError` line each.

    A `Config` built in Python is returned as it is; call `check_config` on it where it matters.
    """
    if isinstance(cfg, Config):
        return cfg
    unknown = unknown_key(OmegaConf.to_container(cfg, resolve=False), Config)
    if unknown:
        raise UserError(unknown)
    typed: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    check_config(typed)
    return typed


def from_dict(values: dict) -> Config:
    """Rebuild a `Config` from a plain dict (a checkpoint's saved config), validating types.

    Keys this version no longer has are dropped rather than refused, so that checkpoints written
    before a setting moved still load; ranges are not checked again, since the run that saved
    the config already trained with it.
    """
    values = copy.deepcopy(values)
    dropped = drop_unknown(values, Config)
    if dropped:
        log.debug("saved config: ignoring settings this version lacks: %s", ", ".join(dropped))
    merged = OmegaConf.merge(OmegaConf.structured(Config), values)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


_register()

"""A checkpoint ready to translate: its model, tokenizers and settings, the search settings it
decodes with (its own, with only the keys a user typed replaced), and input cleaning with counts.

The commands in `nmt.translate` and the scripts build on this; nothing here reads or writes files
other than the checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf.errors import OmegaConfBaseException

from nmt.alignment import Link, word_links
from nmt.checkpoint import checkpoint_file, load_checkpoint
from nmt.config import Config, DecodeConfig, from_dict
from nmt.data.batching import chunks
from nmt.data.clean import has_control_chars, normalize
from nmt.decoding import search_in_order
from nmt.device import resolve_device, resolve_precision
from nmt.errors import UserError
from nmt.models import build_model
from nmt.models.base import MEAN_OF_LAST_LAYER, AttentionChoice, Seq2Seq
from nmt.models.ensemble import Ensemble
from nmt.sampling import sampler
from nmt.scoring import UNSCORED, PairScore, score_in_order
from nmt.search import Hypothesis
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# The Transformer decoder layer whose cross-attention, averaged over heads, aligned words best:
# the first, measured on Multi30k val against eflomal (AER 38.7% against 45.5% and 43.8% for the
# second and last layers of a 3-layer model; README). Negative would count from the last.
DEFAULT_ALIGNMENT_LAYER = 0

# Sections of a saved config that describe the command that trained, not the model: the
# checkpoint is no authority on them (and older checkpoints hold keys since moved).
_COMMAND_SECTIONS = ("translate", "evaluate", "export")


@dataclasses.dataclass
class InputReport:
    """What had to be done to the input, logged once at the end rather than once a line."""

    num_lines: int = 0
    empty: int = 0  # empty or whitespace-only after cleaning: translated as an empty line
    truncated: int = 0  # longer than `Translator.max_src_len`
    bad_bytes: int = 0  # lines with undecodable bytes, replaced by U+FFFD
    control_chars: int = 0  # lines with control characters, removed

    def log_summary(self, max_src_len: int) -> None:
        log.info("translated %d lines (%d empty)", self.num_lines, self.empty)
        if self.truncated:
            log.warning("%d lines were longer than %d subwords (what the model's max_positions "
                        "and translate.max_tokens allow) and were truncated",
                        self.truncated, max_src_len)  # fmt: skip
        if self.bad_bytes:
            log.warning("%d lines had undecodable bytes, replaced by U+FFFD", self.bad_bytes)
        if self.control_chars:
            log.warning("%d lines had control characters, removed", self.control_chars)


def resolve_decode(
    saved: DecodeConfig, overrides: Mapping[str, Any]
) -> tuple[DecodeConfig, dict[str, str]]:
    """The checkpoint's search settings `saved` with the typed `overrides` (key -> value) applied,
    and where each setting came from ("checkpoint" or "command line").

    The settings a run was tuned with (a length penalty chosen on val, say) must survive to
    inference unless the user asks otherwise; a default of the command line is not asking.
    """
    decode = dataclasses.replace(saved, **overrides)
    origins = {
        f.name: "command line" if f.name in overrides else "checkpoint"
        for f in dataclasses.fields(DecodeConfig)
    }
    if not decode.sample and decode.nbest > decode.beam_size:  # only merged settings can be
        raise UserError(
            f"decode.nbest={decode.nbest} ({origins['nbest']}) exceeds decode.beam_size="
            f"{decode.beam_size} ({origins['beam_size']}): type a larger decode.beam_size"
        )
    return decode, origins


def describe_search(decode: DecodeConfig, origins: Mapping[str, str]) -> str:
    """One line saying how the output is searched and where each setting came from."""
    length_origin = "command line" if "command line" in (
        origins["max_len_a"], origins["max_len_b"]) else "checkpoint"  # fmt: skip
    if decode.sample:
        return "search: " + ", ".join([
            f"sampling ({origins['sample']}), {decode.nbest} per sentence ({origins['nbest']})",
            f"temperature {decode.temperature:g} ({origins['temperature']})",
            f"top-k {decode.top_k or 'off'} ({origins['top_k']})",
            f"top-p {decode.top_p:g} ({origins['top_p']})",
            f"seed {decode.seed} ({origins['seed']})",
            f"max length {decode.max_len_a:g}·src+{decode.max_len_b} ({length_origin})",
        ])  # fmt: skip
    parts = [
        f"greedy ({origins['beam_size']})"
        if decode.beam_size == 1
        else f"beam {decode.beam_size} ({origins['beam_size']})",
        f"length penalty {decode.length_penalty:g} ({origins['length_penalty']})",
        f"max length {decode.max_len_a:g}·src+{decode.max_len_b} ({length_origin})",
    ]
    if decode.nbest > 1:
        parts.append(f"{decode.nbest}-best ({origins['nbest']})")
    return "search: " + ", ".join(parts)


class SearchEngine(Protocol):
    """Searches outside nmt's own model (`nmt.ct2_engine`): everything else a `Translator`
    does (cleaning, truncation, detokenization, the commands' file handling) stays the same."""

    def search(
        self, src_ids: Sequence[list[int]], decode: DecodeConfig, *, max_tokens: int
    ) -> list[list[Hypothesis]]:
        """The n-best list of every source (ids without EOS), in the order of `src_ids`, as
        `nmt.decoding.search_in_order` returns it."""
        ...


@dataclasses.dataclass
class Translator:
    """A model rebuilt from a checkpoint alone (or an ensemble of several), with its tokenizers
    and the config it trained with; counts what cleaning had to do to its input (`report`).

    With an `engine` (an exported model), the engine searches and `model` is None."""

    model: Seq2Seq | None
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    ckpt_cfg: Config  # the checkpoint's own configuration (command sections dropped)
    path: Path  # the checkpoint file read (an ensemble's first)
    step: int  # the optimiser step it was saved at
    device: torch.device
    precision: torch.dtype
    report: InputReport = dataclasses.field(default_factory=InputReport)
    engine: SearchEngine | None = None
    ensemble: list[Path] = dataclasses.field(default_factory=list)  # the other members' files
    max_positions: int = 0  # the most positions every member reads (0: the checkpoint's own)

    def __post_init__(self) -> None:
        self.max_positions = self.max_positions or self.ckpt_cfg.model.max_positions

    @classmethod
    def load(
        cls,
        ckpt: str | Path,
        *,
        device: str,
        precision: str,
        ensemble: Sequence[str | Path] = (),
    ) -> Translator:
        """Rebuild the model from a checkpoint file or run directory (its config and
        SentencePiece models); `device`/`precision` are `translate.*` settings. With
        `ensemble` (`translate.ensemble`), the model averages them all (`Ensemble`): they
        must share both SentencePiece models and the input cleaning; architectures may differ.
        """
        first = cls._load_one(ckpt, device=device, precision=precision)
        if not ensemble:
            return first
        members = [first]
        for other in ensemble:
            member = cls._load_one(other, device=device, precision=precision)
            first._check_compatible(member)
            members.append(member)
        model = Ensemble([m.model for m in members]).eval()
        max_positions = min(m.ckpt_cfg.model.max_positions for m in members)
        log.info("ensemble of %d checkpoints: mean of their next-token probabilities",
                 len(members))  # fmt: skip
        return dataclasses.replace(first, model=model, max_positions=max_positions,
                                   ensemble=[m.path for m in members[1:]])  # fmt: skip

    def _check_compatible(self, other: Translator) -> None:
        """Refuse an ensemble member that reads or writes other ids, or cleans text otherwise."""
        pairs = {
            "target SentencePiece model": (self.tgt_tokenizer.definition,
                                          other.tgt_tokenizer.definition),
            "source SentencePiece model": (self.src_tokenizer.definition,
                                          other.src_tokenizer.definition),
            "data.clean.normalization": (self.ckpt_cfg.data.clean.normalization,
                                         other.ckpt_cfg.data.clean.normalization),
        }  # fmt: skip
        differs = [what for what, (mine, theirs) in pairs.items() if mine != theirs]
        if differs:
            raise UserError(
                f"translate.ensemble: {other.path} has another {differs[0]} than {self.path}: "
                "ensemble checkpoints trained on the same data config (one tokenizer) only"
            )

    @classmethod
    def _load_one(cls, ckpt: str | Path, *, device: str, precision: str) -> Translator:
        torch_device = resolve_device(device, key="translate.device")
        dtype = resolve_precision(precision, torch_device, key="translate.precision")
        path = checkpoint_file(ckpt)
        state = load_checkpoint(path, map_location="cpu")
        saved = {k: v for k, v in state["config"].items() if k not in _COMMAND_SECTIONS}
        try:
            cfg = from_dict(saved)
        except OmegaConfBaseException as error:
            raise UserError(
                f"checkpoint {path} holds a config this version of nmt does not read "
                f"({str(error).splitlines()[0]}): it was written by another version"
            ) from None
        src_tokenizer, tgt_tokenizer = Tokenizer(state["src_spm"]), Tokenizer(state["tgt_spm"])
        model = build_model(cfg.model, src_tokenizer.vocab_size, tgt_tokenizer.vocab_size)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise UserError(
                f"checkpoint {path} does not match the model its config describes "
                f"({str(error).splitlines()[0]}): it was written by another version of nmt"
            ) from None
        model.to(torch_device).eval()
        step = state["progress"]["step"]
        averaged = [Path(member).name for member in state.get("averaged_from", [])]
        made = f"average of {', '.join(averaged)}" if averaged else f"step {step}"
        log.info("checkpoint: %s (%s)", path, made)
        return cls(model, src_tokenizer, tgt_tokenizer, cfg, path, step, torch_device, dtype)

    def max_src_len(self, decode: DecodeConfig, max_tokens: int) -> int:
        """Longest source (subwords, EOS excluded) the model reads and answers within its
        `max_positions` (the longest output, a·(S + 1) + b steps as search counts the EOS, must
        fit too), and that fits a search batch of `max_tokens` with its EOS and the empty
        target's one slot."""
        if math.floor(decode.max_len_a * 2 + decode.max_len_b) > self.max_positions:
            raise UserError(  # even a one-subword source (and its EOS) would ask for more
                f"decode.max_len_a={decode.max_len_a} and decode.max_len_b={decode.max_len_b} let "
                f"outputs run past the model's {self.max_positions} positions "
                "(model.max_positions): lower decode.max_len_b"
            )
        limit = self.max_positions - 1
        by_output = int((self.max_positions - decode.max_len_b) / max(decode.max_len_a, 1e-9)) - 1
        return max(1, min(limit - 1, by_output, max_tokens - 2))

    def encode(self, texts: list[str], decode: DecodeConfig, max_tokens: int) -> list[list[int]]:
        """Subword ids of cleaned texts, truncated to `max_src_len` (and counted if they were)."""
        limit = self.max_src_len(decode, max_tokens)
        ids = self.src_tokenizer.encode(texts)
        self.report.truncated += sum(len(x) > limit for x in ids)
        return [x[:limit] for x in ids]

    def translate(
        self,
        lines: Iterable[str],
        decode: DecodeConfig,
        *,
        max_tokens: int,
        chunk_lines: int,
        need_attention: bool = False,
        attention: AttentionChoice = MEAN_OF_LAST_LAYER,
    ) -> Iterator[tuple[str, list[Hypothesis], list[int]]]:
        """(cleaned source, n-best list, source ids) per input line, in input order; with
        `need_attention`, the hypotheses carry the cross-attention `attention` picks.

        Lines are read `chunk_lines` at a time, so a stream of any length is translated in
        bounded memory, while each chunk is long enough to sort into well-filled batches.
        Sampling draws from one stream for all chunks: a chunk does not repeat the last one's.
        """
        generator = sampler(decode, self.device) if decode.sample else None
        for chunk in chunks(lines, chunk_lines):
            texts = [self._clean(line) for line in chunk]
            src_ids = self.encode(texts, decode, max_tokens)
            if self.engine is not None:  # config_checks refuses attention with an engine
                found = self.engine.search(src_ids, decode, max_tokens=max_tokens)
            else:
                found = search_in_order(self.model, src_ids, decode, device=self.device,
                                        precision=self.precision, max_tokens=max_tokens,
                                        need_attention=need_attention,
                                        attention=attention, generator=generator)  # fmt: skip
            yield from zip(texts, found, src_ids)

    def score(
        self,
        pairs: Iterable[tuple[str, str]],
        *,
        max_tokens: int,
        max_sentences: int,
        chunk_lines: int,
    ) -> Iterator[PairScore]:
        """The forced score of every (source, target) pair, in input order, both sides cleaned
        and encoded as for translation. Pairs with an empty side, or longer than the model reads
        (`max_positions`) or than a batch of `max_tokens` holds, are `UNSCORED` (nan, 0 tokens)
        rather than truncated: a score of part of a target would pass for the whole one's.
        """
        for chunk in chunks(pairs, chunk_lines):
            src_ids = self.src_tokenizer.encode([self._clean(src) for src, _ in chunk])
            tgt_ids = self.tgt_tokenizer.encode([self._clean_target(tgt) for _, tgt in chunk])
            fits = [
                max(len(s), len(t)) < self.max_positions and len(s) + len(t) + 2 <= max_tokens
                for s, t in zip(src_ids, tgt_ids)
            ]
            self.report.truncated += fits.count(False)
            scores = score_in_order(
                self.model,
                [s if ok else [] for s, ok in zip(src_ids, fits)],
                [t if ok else [] for t, ok in zip(tgt_ids, fits)],
                device=self.device,
                precision=self.precision,
                max_tokens=max_tokens,
                max_sentences=max_sentences,
            )
            yield from (score if ok else UNSCORED for score, ok in zip(scores, fits))

    def _clean_target(self, line: str) -> str:
        """A target line cleaned as a source line is (`_clean`), counted only for its control
        characters (the line counts are the sources')."""
        self.report.control_chars += has_control_chars(line)
        return normalize(line, self.ckpt_cfg.data.clean.normalization)

    def _clean(self, line: str) -> str:
        """Normalize as training's data was (Unicode form, control characters, whitespace)."""
        self.report.num_lines += 1
        if has_control_chars(line):
            self.report.control_chars += 1
        text = normalize(line, self.ckpt_cfg.data.clean.normalization)
        self.report.empty += not text
        return text

    def detokenize(self, hypothesis: Hypothesis) -> str:
        """Detokenized text of one hypothesis, on one line whatever the vocabulary holds."""
        return " ".join(self.tgt_tokenizer.decode([hypothesis.tokens])[0].split())

    def attention_choice(self, layer: int | None, heads: list[int] | None) -> AttentionChoice:
        """The cross-attention `translate.alignment_layer` / `alignment_heads` name, checked
        against this model. Layer null: the RNN's one attention, or for the Transformer
        `DEFAULT_ALIGNMENT_LAYER`, the layer whose alignments came closest to eflomal's on val.
        An ensemble reads the mean of its members' own attention (`DecoderOutput.attn`): its
        members' layers need not match, so no layer or head can be chosen."""
        if self.ensemble:
            if layer is not None or heads is not None:
                raise UserError(
                    "translate.alignment_layer/alignment_heads choose within one model: an "
                    "ensemble's alignments read the mean of its members' attention; leave them "
                    "unset, or align with one checkpoint"
                )
            return MEAN_OF_LAST_LAYER
        model = self.ckpt_cfg.model
        transformer = model.arch == "transformer"
        num_layers = model.num_decoder_layers if transformer else 1
        num_heads = model.num_heads if transformer else 1
        if layer is None:
            layer = DEFAULT_ALIGNMENT_LAYER if transformer else 0
        if not -num_layers <= layer < num_layers:
            raise UserError(
                f"translate.alignment_layer={layer} is out of range: this model's decoder has "
                f"{num_layers} attention layer(s); use 0 to {num_layers - 1}, or -1 for the last"
            )
        if heads is not None and max(heads) >= num_heads:
            raise UserError(
                f"translate.alignment_heads={list(heads)} is out of range: this model has "
                f"{num_heads} head(s) per layer, numbered from 0"
            )
        return AttentionChoice(layer, None if heads is None else tuple(heads))

    def align(self, text: str, src_ids: list[int], hypothesis: Hypothesis) -> list[Link]:
        """Word links (source word, output word) of a hypothesis searched with attention:
        words are the whitespace tokens of the cleaned source `text` (`src_ids` are its
        possibly truncated subwords) and of the detokenized output (`detokenize`)."""
        if hypothesis.attn is None or not src_ids:
            return []
        src_words = self.src_tokenizer.source_words(text)[: len(src_ids)]
        tgt_words = self.tgt_tokenizer.output_words(hypothesis.tokens)
        return word_links(hypothesis.attn, src_words, tgt_words)

"""Translate text with a checkpoint: streamed in chunks, length-sorted batches, input order kept.

Every input line gives exactly one output line: empty and whitespace-only lines give an empty
line, over-long lines are truncated to what the model can read, and undecodable bytes or
control characters are replaced and counted (or, with `translate.strict`, stop with the line).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from nmt import viz
from nmt.checkpoint import load_checkpoint
from nmt.config import Config, DecodeConfig, from_dict
from nmt.data.batching import collate, plan_batches
from nmt.data.clean import has_control_chars, normalize
from nmt.device import autocast, resolve_device, resolve_precision
from nmt.errors import UserError
from nmt.models import build_model
from nmt.models.base import Seq2Seq
from nmt.search import Hypothesis, search
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class InputReport:
    """What had to be done to the input, for one warning each at the end."""

    num_lines: int = 0
    empty: int = 0
    truncated: int = 0
    bad_bytes: int = 0
    control: int = 0

    def warn(self, max_src_len: int) -> None:
        if self.truncated:
            log.warning("%d lines were longer than %d subwords and were truncated",
                        self.truncated, max_src_len)  # fmt: skip
        if self.bad_bytes:
            log.warning("%d lines had undecodable bytes, replaced by U+FFFD", self.bad_bytes)
        if self.control:
            log.warning("%d lines had control characters, removed", self.control)


@dataclass
class Translator:
    """A model with its tokenizers and the settings it was trained with."""

    model: Seq2Seq
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    cfg: Config  # the checkpoint's own configuration
    device: torch.device
    precision: torch.dtype
    report: InputReport = field(default_factory=InputReport)

    @classmethod
    def load(cls, ckpt: str | Path, device: str = "auto", precision: str = "auto") -> Translator:
        """Rebuild the model from a checkpoint alone (its config and SentencePiece models)."""
        torch_device = resolve_device(device, key="translate.device")
        dtype = resolve_precision(precision, torch_device, key="translate.precision")
        state = load_checkpoint(ckpt, map_location="cpu")
        cfg = from_dict(state["config"])
        src_tokenizer, tgt_tokenizer = Tokenizer(state["src_spm"]), Tokenizer(state["tgt_spm"])
        model = build_model(cfg.model, src_tokenizer.vocab_size, tgt_tokenizer.vocab_size)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise UserError(
                f"checkpoint {ckpt} does not match the model its config describes "
                f"({str(error).splitlines()[0]}): it was written by another version of nmt"
            ) from None
        model.to(torch_device).eval()
        return cls(model, src_tokenizer, tgt_tokenizer, cfg, torch_device, dtype)

    def max_src_len(self, decode: DecodeConfig) -> int:
        """Longest source (subwords, EOS excluded) the model reads and answers within its
        `max_positions`: max output length a·S + b must fit too."""
        limit = self.cfg.model.max_positions - 1
        by_output = int((limit - decode.max_len_b) / max(decode.max_len_a, 1e-9))
        return max(1, min(limit - 1, by_output))

    def encode(self, texts: list[str], decode: DecodeConfig) -> list[list[int]]:
        limit = self.max_src_len(decode)
        ids = self.src_tokenizer.encode(texts)
        self.report.truncated += sum(len(x) > limit for x in ids)
        return [x[:limit] for x in ids]

    def translate_ids(
        self, src_ids: list[list[int]], decode: DecodeConfig, max_tokens: int, need_attention: bool
    ) -> list[list[Hypothesis]]:
        """n-best lists for encoded sentences, in their order."""
        return search_in_order(self.model, src_ids, decode, self.device, self.precision,
                               max_tokens, need_attention)  # fmt: skip

    def translate(
        self,
        lines: Iterable[str],
        decode: DecodeConfig,
        max_tokens: int = 8192,
        chunk_lines: int = 20_000,
        need_attention: bool = False,
    ) -> Iterator[tuple[str, list[Hypothesis], list[int]]]:
        """(source, n-best, source ids) per input line, in input order, `chunk_lines` at a time."""
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == chunk_lines:
                yield from self._translate_chunk(chunk, decode, max_tokens, need_attention)
                chunk = []
        if chunk:
            yield from self._translate_chunk(chunk, decode, max_tokens, need_attention)

    def _translate_chunk(self, chunk, decode, max_tokens, need_attention):
        texts = [self._clean(line) for line in chunk]
        src_ids = self.encode(texts, decode)
        found = self.translate_ids(src_ids, decode, max_tokens, need_attention)
        yield from zip(texts, found, src_ids)

    def _clean(self, line: str) -> str:
        self.report.num_lines += 1
        if has_control_chars(line):
            self.report.control += 1
        text = normalize(line, self.cfg.data.clean.normalization)
        self.report.empty += not text
        return text

    def detokenize(self, hypothesis: Hypothesis) -> str:
        """Detokenized text of one hypothesis, on one line whatever the vocabulary holds."""
        return " ".join(self.tgt_tokenizer.decode([hypothesis.tokens])[0].split())


@torch.inference_mode()
def search_in_order(
    model: Seq2Seq,
    src_ids: list[list[int]],
    decode: DecodeConfig,
    device: torch.device,
    precision: torch.dtype = torch.float32,
    max_tokens: int = 8192,
    need_attention: bool = False,
) -> list[list[Hypothesis]]:
    """Search every source (ids without EOS) in length-sorted batches of at most `max_tokens`
    source tokens and `decode.batch_size` sentences; n-best lists come back in input order.
    An empty source gets an empty output without a search."""
    model.eval()
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, True)] for _ in src_ids]
    real = [i for i, ids in enumerate(src_ids) if ids]
    lengths = [len(src_ids[i]) for i in real]
    plan = plan_batches(lengths, [0] * len(real), max_tokens, pad_multiple=1,
                        max_sentences=decode.batch_size)  # fmt: skip
    for batch in plan:
        rows = [real[i] for i in batch]
        padded = collate([src_ids[r] for r in rows], [[] for _ in rows], rows, pad_multiple=1)
        with autocast(device, precision):
            found = search(model, padded.src.to(device), padded.src_mask.to(device), decode,
                           need_attention)  # fmt: skip
        for row, nbest in zip(rows, found.nbest):
            results[row] = nbest
    return results


def read_lines(stream: BinaryIO, name: str, strict: bool, report: InputReport) -> Iterator[str]:
    """Lines of a byte stream split on `\\n` only, decoded as UTF-8 (bad bytes: see `strict`)."""
    for line_no, raw in enumerate(stream, start=1):
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            if strict:
                raise UserError(
                    f"{name}:{line_no}: invalid UTF-8 byte 0x{raw[error.start]:02x}: fix the "
                    "line, or leave translate.strict=false to replace and count such bytes"
                ) from None
            report.bad_bytes += 1
            text = raw.decode("utf-8", errors="replace")
        if strict and has_control_chars(text):
            raise UserError(
                f"{name}:{line_no}: control character in the input: remove it, or leave "
                "translate.strict=false to drop such characters with a warning"
            )
        yield text


def save_attention(
    translator: Translator, path: Path, src_ids: list[int], hypothesis: Hypothesis, index: int
) -> None:
    """A labelled heatmap PNG of one sentence's attention (target rows, source columns): the
    RNN's additive attention, or the Transformer's last-layer cross-attention (head mean)."""
    src_labels = [*translator.src_tokenizer.pieces(src_ids), "</s>"]
    tgt_labels = translator.tgt_tokenizer.pieces(hypothesis.tokens)
    if hypothesis.eos:
        tgt_labels.append("</s>")
    attn = hypothesis.attn.numpy() if hypothesis.attn is not None else None
    if attn is None or attn.size == 0:
        return
    kind = "additive " if translator.cfg.model.arch == "rnn" else "last-layer cross-"
    title = f"sentence {index}: {kind}attention"
    viz.save_png(viz.heatmap(attn, src_labels, tgt_labels, title), path)


def translate_file(cfg: Config) -> InputReport:
    """`nmt translate`: input file (or stdin) to output file (or stdout), one line per line.

    A file output is written to a temporary name and renamed when complete, so it is never
    left half-written.
    """
    settings = cfg.translate
    if settings.ckpt is None:
        raise UserError("translate.ckpt is required: a checkpoint file or a run directory")
    translator = Translator.load(settings.ckpt, settings.device, settings.precision)
    decode = cfg.decode
    if decode.nbest > decode.beam_size:
        raise UserError(f"decode.nbest={decode.nbest} exceeds decode.beam_size={decode.beam_size}")
    input_path = Path(settings.input) if settings.input else None
    if input_path is not None and not input_path.is_file():
        raise UserError(f"input file {input_path} does not exist (translate.input)")
    attention_dir = Path(settings.attention_dir) if settings.attention_dir else None
    source = open(input_path, "rb") if input_path else sys.stdin.buffer  # noqa: SIM115
    outputs = _Outputs(settings.output, settings.nbest_tsv)
    try:
        lines = read_lines(source, str(input_path or "<stdin>"), settings.strict, translator.report)
        results = translator.translate(
            lines, decode, settings.max_tokens, settings.chunk_lines, attention_dir is not None
        )
        for index, (_, nbest, src_ids) in enumerate(results):
            outputs.write(index, [(translator.detokenize(h), h.score) for h in nbest])
            if attention_dir is not None:
                path = attention_dir / f"{index:06d}.png"  # the n-best TSV's index
                save_attention(translator, path, src_ids, nbest[0], index)
        outputs.commit()
    finally:
        outputs.close()
        if input_path:
            source.close()
    translator.report.warn(translator.max_src_len(decode))
    return translator.report


class _Outputs:
    """The translation (file or stdout) and optional n-best TSV, committed by rename."""

    def __init__(self, output: str | None, nbest_tsv: str | None) -> None:
        self.targets = [Path(p) for p in (output, nbest_tsv) if p]
        self.temporary = [p.with_name(f".{p.name}.tmp") for p in self.targets]
        for path in self.temporary:
            path.parent.mkdir(parents=True, exist_ok=True)
        files = [open(p, "w", encoding="utf-8") for p in self.temporary]  # noqa: SIM115
        self.text = files[0] if output else sys.stdout
        self.nbest = files[-1] if nbest_tsv else None
        self.files = files

    def write(self, index: int, nbest: list[tuple[str, float]]) -> None:
        self.text.write(nbest[0][0] + "\n")
        if self.nbest is not None:
            for rank, (text, score) in enumerate(nbest):
                self.nbest.write(f"{index}\t{rank}\t{score:.4f}\t{text}\n")

    def commit(self) -> None:
        for file in self.files:
            file.close()
        for tmp, path in zip(self.temporary, self.targets):
            tmp.replace(path)

    def close(self) -> None:
        """Close, and remove what was not committed (an interrupted run leaves nothing)."""
        for file in self.files:
            file.close()
        for tmp in self.temporary:
            tmp.unlink(missing_ok=True)
        if self.text is sys.stdout:
            sys.stdout.flush()

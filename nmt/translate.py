"""The `nmt translate` and `nmt evaluate` commands: a checkpoint with its own settings (only the
decode keys a user typed replace the checkpoint's), text in, translations or sacreBLEU scores out.

Both commands start the same way (`_start`): load the checkpoint, say which file and step, merge
the search settings and say where each came from. They sit above search and evaluation, which
training also uses, and are the only place that reads and writes the user's files.

Every input line of `nmt translate` gives exactly one output line: empty and whitespace-only
lines give an empty line, over-long lines are truncated to what the model can read, and
undecodable bytes or control characters are replaced and counted (or, with `translate.strict`,
stop with the line). Paths that could only fail after translating everything, or that would
overwrite the input, are refused before the model is even loaded.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import datasets

from nmt import viz
from nmt.alignment import format_pharaoh
from nmt.config import DecodeConfig, EvaluateConfig, TranslateConfig
from nmt.ct2_engine import load_export
from nmt.data.batching import column
from nmt.data.clean import has_control_chars
from nmt.data.corpus import load_split
from nmt.data.lines import Replacements
from nmt.data.lines import read_lines as read_utf8_lines
from nmt.errors import UserError
from nmt.evaluate import Scores, corpus_scores
from nmt.models.base import MEAN_OF_LAST_LAYER, AttentionChoice
from nmt.search import Hypothesis
from nmt.translator import InputReport, Translator, describe_search, resolve_decode

log = logging.getLogger(__name__)


def _start(
    settings: TranslateConfig, decode_overrides: Mapping[str, Any] | None
) -> tuple[Translator, DecodeConfig]:
    """Load `translate.ckpt` (a checkpoint, or an `nmt export` folder with
    translate.engine=ctranslate2) and merge its search settings with the typed `decode_overrides`;
    log which checkpoint and which search, so a score or a file can be traced to both."""
    if settings.ckpt is None:
        raise UserError("translate.ckpt is required: a checkpoint file or a run directory")
    if settings.engine == "ctranslate2":  # config_checks refuses an ensemble with it
        translator = load_export(settings.ckpt, device=settings.device,
                                 precision=settings.precision)  # fmt: skip
    else:
        translator = Translator.load(settings.ckpt, device=settings.device,
                                     precision=settings.precision,
                                     ensemble=settings.ensemble)  # fmt: skip
    decode, origins = resolve_decode(translator.ckpt_cfg.decode, decode_overrides or {})
    log.info("%s", describe_search(decode, origins))
    return translator, decode


def check_paths(settings: TranslateConfig) -> None:
    """Refuse, before any work, the paths that would fail only after translating everything
    or destroy data: a missing input, an output or n-best file that is a directory, a heatmap
    folder that is a file, and any two of input, output, n-best file and heatmap folder that
    are the same path (an output equal to the input would replace it with its translation)."""
    named = {
        key: Path(value)
        for key, value in (
            ("translate.input", settings.input),
            ("translate.output", settings.output),
            ("translate.nbest_tsv", settings.nbest_tsv),
            ("translate.attention_dir", settings.attention_dir),
            ("translate.alignments", settings.alignments),
        )
        if value
    }
    source = named.get("translate.input")
    if source is not None and not source.is_file():
        raise UserError(f"input file {source} does not exist (translate.input)")
    if source is not None and not os.access(source, os.R_OK):
        raise UserError(f"input file {source} cannot be read: permission denied (translate.input)")
    for key in ("translate.output", "translate.nbest_tsv", "translate.alignments"):
        if key in named and named[key].is_dir():
            raise UserError(f"{key}={named[key]} is a directory: give a file name")
    folder = named.get("translate.attention_dir")
    if folder is not None and folder.exists() and not folder.is_dir():
        raise UserError(f"translate.attention_dir={folder} is a file: give a folder for the PNGs")
    for (key_a, a), (key_b, b) in itertools.combinations(named.items(), 2):
        if a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b)):
            raise UserError(f"{key_b}={b} is the same path as {key_a}: give each its own path")


def translate_file(
    settings: TranslateConfig, *, decode_overrides: Mapping[str, Any] | None = None
) -> InputReport:
    """`nmt translate`: `translate.input` (or stdin) to `translate.output` (or stdout), one line
    per line, with the checkpoint's search settings but for `decode_overrides` (key -> value).

    A file output is written to a temporary name and renamed when complete, so it is never
    left half-written, even by Ctrl-C.
    """
    check_paths(settings)
    translator, decode = _start(settings, decode_overrides)
    input_path = Path(settings.input) if settings.input else None
    attention_dir = Path(settings.attention_dir) if settings.attention_dir else None
    if attention_dir is not None:
        _make_folder(attention_dir, "translate.attention_dir")
    # Alignments read the chosen layer and heads; heatmaps alone draw the last layer's mean.
    chosen = settings.alignments or settings.alignment_layer is not None or settings.alignment_heads
    attention = MEAN_OF_LAST_LAYER
    if chosen:
        attention = translator.attention_choice(settings.alignment_layer, settings.alignment_heads)
    source = open(input_path, "rb") if input_path else sys.stdin.buffer  # noqa: SIM115
    outputs = _Outputs()
    try:
        outputs.open(settings.output, "translate.output")
        outputs.open(settings.nbest_tsv, "translate.nbest_tsv")
        outputs.open(settings.alignments, "translate.alignments")
        lines = read_lines(source, str(input_path or "<stdin>"), strict=settings.strict,
                           report=translator.report)  # fmt: skip
        results = translator.translate(lines, decode, max_tokens=settings.max_tokens,
                                        chunk_lines=settings.chunk_lines,
                                        need_attention=attention_dir is not None
                                        or outputs.alignments is not None,
                                        attention=attention)  # fmt: skip
        for index, (text, nbest, src_ids) in enumerate(results):
            outputs.write(index, [(translator.detokenize(h), h.score) for h in nbest])
            if outputs.alignments is not None:
                links = translator.align(text, src_ids, nbest[0])
                outputs.alignments.write(format_pharaoh(links) + "\n")
            if attention_dir is not None:
                path = attention_dir / f"{index:06d}.png"  # the n-best TSV's index
                save_attention(translator, path, src_ids, nbest[0], index, attention)
        outputs.commit()
    finally:
        outputs.close()
        if input_path:
            source.close()
    translator.report.log_summary(translator.max_src_len(decode, settings.max_tokens))
    return translator.report


def read_lines(stream: BinaryIO, name: str, *, strict: bool, report: InputReport) -> Iterator[str]:
    """The input's lines through the corpus reader (`nmt.data.lines.read_lines`: `\\n` alone
    ends a line, so one input line is one output line); with `translate.strict`, a bad byte or
    a control character stops with the line, otherwise they are replaced and counted."""
    replaced = None if strict else Replacements()
    fix = "fix the line, or leave translate.strict=false to replace and count such bytes"
    lines = read_utf8_lines(stream, name, fix=fix, replacements=replaced)
    try:
        for line_no, text in enumerate(lines, start=1):
            if strict and has_control_chars(text):
                raise UserError(
                    f"{name}:{line_no}: control character in the input: remove it, or leave "
                    "translate.strict=false to drop such characters with a warning"
                )
            yield text
    finally:
        report.bad_bytes += replaced.num_lines if replaced else 0


def save_attention(
    translator: Translator,
    path: Path,
    src_ids: list[int],
    hypothesis: Hypothesis,
    index: int,
    attention: AttentionChoice = MEAN_OF_LAST_LAYER,
) -> None:
    """A labelled heatmap PNG of one sentence's attention (target rows, source columns): the
    RNN's additive attention, or the Transformer's cross-attention of the layer and heads
    `attention` picks (translate.alignment_layer/heads), by default the last layer's head mean."""
    attn = hypothesis.attn.numpy() if hypothesis.attn is not None else None
    if attn is None or attn.size == 0:
        return  # an empty source was not searched: nothing to draw
    src_labels = [*translator.src_tokenizer.pieces(src_ids), "</s>"]
    tgt_labels = translator.tgt_tokenizer.pieces(hypothesis.tokens)
    if hypothesis.eos:
        tgt_labels.append("</s>")
    kind = "additive "
    if translator.ensemble:
        kind = "ensemble-mean "  # of each member's default attention (Translator.attention_choice)
    elif translator.ckpt_cfg.model.arch != "rnn":
        num_layers = translator.ckpt_cfg.model.num_decoder_layers
        heads = "" if attention.heads is None else f" (heads {list(attention.heads)})"
        kind = f"layer {attention.layer % num_layers + 1}/{num_layers}{heads} cross-"
    title = f"sentence {index}: {kind}attention"
    viz.save_png(viz.heatmap(attn, src_labels, tgt_labels, title), path)


def _make_folder(path: Path, key: str) -> None:
    """Create a folder now, so that a path that cannot be one fails before the translation."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {key}={path}: {error.strerror}") from None


class _Outputs:
    """The translation (a file, or stdout) and the optional n-best TSV, committed by rename.

    Files are written under a temporary name beside their target and renamed into place only
    once everything is translated: an interrupted or failed run leaves the previous file (or
    none) and no temporary file. The process id in the name keeps concurrent runs apart.
    """

    def __init__(self) -> None:
        self.renames: list[tuple[Path, Path]] = []  # (temporary, target)
        self.files: list[TextIO] = []
        self.text: TextIO = sys.stdout
        self.nbest: TextIO | None = None
        self.alignments: TextIO | None = None

    def open(self, target: str | None, key: str) -> None:
        """Open the temporary file of `translate.output`, `.nbest_tsv` or `.alignments` (`key`)."""
        if not target:
            return
        path = Path(target)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        _make_folder(path.parent, key)
        try:
            file = open(tmp, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as error:
            raise UserError(f"cannot write {key}={path}: {error.strerror}") from None
        self.renames.append((tmp, path))
        self.files.append(file)
        if key == "translate.output":
            self.text = file
        elif key == "translate.alignments":
            self.alignments = file
        else:
            self.nbest = file

    def write(self, index: int, nbest: list[tuple[str, float]]) -> None:
        """The best translation of line `index`, and its n-best list as TSV rows
        (line index, rank, score, text)."""
        self.text.write(nbest[0][0] + "\n")
        if self.nbest is not None:
            for rank, (text, score) in enumerate(nbest):
                self.nbest.write(f"{index}\t{rank}\t{score:.4f}\t{text}\n")

    def commit(self) -> None:
        for file in self.files:
            file.close()
        for tmp, path in self.renames:
            tmp.replace(path)

    def close(self) -> None:
        """Close, and remove what was not committed (an interrupted run leaves nothing)."""
        for file in self.files:
            file.close()
        for tmp, _ in self.renames:
            tmp.unlink(missing_ok=True)
        if self.text is sys.stdout:
            sys.stdout.flush()  # a closed pipe (`| head`) raises here, for the command to end


def _read_text(path: Path, key: str) -> list[str]:
    """The lines of `path`, split at "\n" only (as sacreBLEU reads them); a last line without
    its newline is still a line."""
    if not path.is_file():
        raise UserError(f"{path} does not exist ({key})")
    text = path.read_text(encoding="utf-8")
    return text.removesuffix("\n").split("\n") if text else []


def score_files(hypotheses: Path, references: Path) -> dict:
    """sacreBLEU of a hypothesis file against a reference file, as a `format_scores` row."""
    hyps = _read_text(hypotheses, "evaluate.hypotheses")
    refs = _read_text(references, "evaluate.references")
    if len(hyps) != len(refs):
        raise UserError(
            f"{hypotheses} has {len(hyps)} lines but {references} has {len(refs)}: "
            "a translation has one line per reference line"
        )
    scores = corpus_scores(hyps, refs)
    return {"split": hypotheses.name, "lines": len(hyps), **dataclasses.asdict(scores)}


def translate_and_score(
    translator: Translator,
    raw: datasets.Dataset,
    decode: DecodeConfig,
    *,
    max_tokens: int,
    chunk_lines: int,
) -> tuple[list[str], Scores]:
    """Translate a raw split's `src` column as `nmt translate` would (same cleaning, batching
    and detokenization) and score the output against its raw `tgt` column."""
    results = translator.translate(column(raw, "src"), decode, max_tokens=max_tokens,
                                   chunk_lines=chunk_lines)  # fmt: skip
    hypotheses = [translator.detokenize(nbest[0]) for _, nbest, _ in results]
    return hypotheses, corpus_scores(hypotheses, column(raw, "tgt"))


def evaluate_checkpoint(
    settings: TranslateConfig,
    evaluate: EvaluateConfig,
    *,
    decode_overrides: Mapping[str, Any] | None = None,
) -> dict:
    """`nmt evaluate`: translate the checkpoint's validation and test splits (or
    `evaluate.splits`) and score them against the raw reference files.

    The scores go to `eval_<checkpoint>.json` beside the checkpoint, with the search settings
    used and each split's translations (`eval_<checkpoint>.<split>.<lang>`), so anyone can
    rescore them with the `sacrebleu` command. Returns that record, with its `path`.
    """
    translator, decode = _start(settings, decode_overrides)
    data_cfg = translator.ckpt_cfg.data
    if evaluate.data_root:
        data_cfg = dataclasses.replace(data_cfg, root=evaluate.data_root)
    # An ensemble's record sits beside its first checkpoint, named after every member.
    others = [f"+{p.parent.name}.{p.stem}" for p in translator.ensemble]
    stem, folder = f"eval_{translator.path.stem}{''.join(others)}", translator.path.parent
    if not os.access(folder, os.W_OK):  # before translating, not after
        raise UserError(
            f"nmt evaluate writes its scores and translations beside the checkpoint, but {folder} "
            "is not writable: copy the checkpoint to a folder you can write"
        )
    budget = {"max_tokens": settings.max_tokens, "chunk_lines": settings.chunk_lines}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        splits = evaluate.splits or [data_cfg.valid_split, *data_cfg.test_splits]
        for split in dict.fromkeys(splits):  # each once, also when val is a test split
            raw = load_split(data_cfg, split, Path(tmp))
            hypotheses, scores = translate_and_score(translator, raw, decode, **budget)
            translations = folder / f"{stem}.{split}.{data_cfg.tgt_lang}"
            translations.write_text("".join(f"{line}\n" for line in hypotheses), encoding="utf-8")
            rows.append({"split": split, "lines": len(hypotheses), **dataclasses.asdict(scores),
                         "translations": str(translations)})  # fmt: skip
    translator.report.log_summary(translator.max_src_len(decode, settings.max_tokens))
    record = {"checkpoint": str(translator.path), "step": translator.step,
              **({"ensemble": [str(p) for p in translator.ensemble]} if translator.ensemble
                 else {}),
              "decode": dataclasses.asdict(decode), "results": rows}  # fmt: skip
    out = folder / f"{stem}.json"
    out.write_text(json.dumps(record, indent=2))
    return {**record, "path": str(out)}


def format_scores(rows: list[dict]) -> str:
    """A table of BLEU and chrF per split, with the sacreBLEU signatures under it."""
    lines = [f"{'split':<22} {'lines':>6} {'BLEU':>7} {'chrF':>7} {'BLEU-lc':>8}"]
    for row in rows:
        lines.append(
            f"{row['split']:<22} {row['lines']:>6} {row['bleu']:>7.2f} {row['chrf']:>7.2f} "
            f"{row['bleu_lc']:>8.2f}"
        )
    lines.append(f"BLEU signature: {rows[0]['bleu_signature']}")
    lines.append(f"chrF signature: {rows[0]['chrf_signature']}")
    lines.append(f"BLEU-lc signature: {rows[0]['bleu_lc_signature']}")
    lines.append(
        "(sacreBLEU on detokenized output against the raw references; BLEU and chrF cased, "
        "BLEU-lc lowercased as `sacrebleu -lc`, for comparison with papers only)"
    )
    return "\n".join(lines)

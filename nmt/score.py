"""The `nmt score` command: force-decode aligned (source, target) pairs with a checkpoint (or an
ensemble) and write, per pair, `logprob<TAB>avg<TAB>tokens`.

logprob = Σ log p(y_t | y_<t, x) over the target's subwords and EOS (natural log, the
normalisation search uses, no label smoothing); tokens = target subwords + 1 (EOS); avg =
logprob / tokens. Every input pair gives exactly one line, in input order: a pair with an empty
side, or longer than the model reads, gives `nan<TAB>nan<TAB>0`; bad bytes and control
characters follow `nmt translate`'s policy (replaced and counted, or an error with
`translate.strict`). Misaligned files are refused before the model is loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from nmt.config import ScoreConfig, TranslateConfig
from nmt.errors import UserError
from nmt.scoring import PairScore
from nmt.translate import read_lines
from nmt.translator import Translator, resolve_decode

log = logging.getLogger(__name__)


def score_pairs(
    settings: TranslateConfig,
    score: ScoreConfig,
    *,
    decode_overrides: Mapping[str, Any] | None = None,
) -> list[PairScore]:
    """`nmt score`: the forced score of every pair of `score.source`/`score.target` (or
    `score.tsv`) to `score.output` (or stdout), written atomically; returns the scores."""
    inputs = _check_inputs(score)
    if settings.ckpt is None:
        raise UserError("translate.ckpt is required: a checkpoint file or a run directory")
    translator = Translator.load(settings.ckpt, device=settings.device,
                                 precision=settings.precision,
                                 ensemble=settings.ensemble)  # fmt: skip
    decode, _ = resolve_decode(translator.ckpt_cfg.decode, decode_overrides or {})
    log.info("forced decoding (no search): Σ log p of each target and its EOS")
    read = {"strict": settings.strict, "report": translator.report}
    files = [open(path, "rb") for path in inputs]  # noqa: SIM115
    try:
        columns = [read_lines(f, str(path), **read) for f, path in zip(files, inputs)]
        pairs = zip(*columns) if len(columns) == 2 else _split_tsv(columns[0], inputs[0])
        results = translator.score(pairs, max_tokens=settings.max_tokens,
                                   max_sentences=decode.max_sentences,
                                   chunk_lines=settings.chunk_lines)  # fmt: skip
        scores = []
        with _atomic_output(score.output) as out:
            for result in results:
                out.write(f"{result.log_prob:.4f}\t{result.average:.4f}\t{result.num_tokens}\n")
                scores.append(result)
    finally:
        for file in files:
            file.close()
    report = translator.report
    log.info("scored %d pairs (%d not scored: nan)", len(scores),
             sum(s.num_tokens == 0 for s in scores))  # fmt: skip
    if report.truncated:
        log.warning("%d pairs were longer than the model reads (max_positions %d) or than "
                    "translate.max_tokens=%d holds: nan", report.truncated,
                    translator.max_positions, settings.max_tokens)  # fmt: skip
    if report.bad_bytes:
        log.warning("%d lines had undecodable bytes, replaced by U+FFFD", report.bad_bytes)
    if report.control_chars:
        log.warning("%d lines had control characters, removed", report.control_chars)
    return scores


def _check_inputs(score: ScoreConfig) -> list[Path]:
    """The input files, refused before any work if missing, misaligned or overwritten."""
    if score.tsv and (score.source or score.target):
        raise UserError("give score.source and score.target, or score.tsv, not both")
    if not score.tsv and not (score.source and score.target):
        raise UserError("give score.source=FILE and score.target=FILE (aligned), or score.tsv")
    named = {"score.tsv": score.tsv} if score.tsv else {
        "score.source": score.source, "score.target": score.target}  # fmt: skip
    paths = {key: Path(value) for key, value in named.items()}
    for key, path in paths.items():
        if not path.is_file():
            raise UserError(f"input file {path} does not exist ({key})")
        if not os.access(path, os.R_OK):
            raise UserError(f"input file {path} cannot be read: permission denied ({key})")
    if score.output:
        output = Path(score.output)
        if output.is_dir():
            raise UserError(f"score.output={output} is a directory: give a file name")
        for key, path in paths.items():
            if output.resolve() == path.resolve():
                raise UserError(f"score.output={output} is the same path as {key}: give it its own")
    if len(paths) == 2:
        (src_key, src), (tgt_key, tgt) = paths.items()
        num_src, num_tgt = _count_lines(src), _count_lines(tgt)
        if num_src != num_tgt:
            raise UserError(
                f"{src} ({src_key}) has {num_src} lines but {tgt} ({tgt_key}) has {num_tgt}: "
                "give aligned files, one target line per source line"
            )
    return list(paths.values())


def _count_lines(path: Path) -> int:
    """Lines as `read_lines` reads them: `\\n` ends one; a last line without it counts too."""
    count, last = 0, b"\n"
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            count, last = count + block.count(b"\n"), block[-1:]
    return count + (last != b"\n")


def _split_tsv(lines: Iterator[str], path: Path) -> Iterator[tuple[str, str]]:
    """(source, target) of each `source<TAB>target` line; an empty line is an empty pair."""
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            yield "", ""
            continue
        source, tab, target = line.partition("\t")
        if not tab:
            raise UserError(f"{path}:{line_no}: no tab: score.tsv holds `source<TAB>target` a line")
        yield source, target


@contextmanager
def _atomic_output(target: str | None) -> Iterator[TextIO]:
    """stdout, or a temporary file beside `target` renamed into place once complete: an
    interrupted run leaves the previous file (or none) and no temporary file."""
    if not target:
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(tmp, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as error:
        raise UserError(f"cannot write score.output={path}: {error.strerror}") from None
    try:
        with file:
            yield file
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)

"""`translate.engine=ctranslate2`: an `nmt export` folder decoded by CTranslate2 behind the same
`Translator` as a checkpoint, so the commands keep their input policy (cleaning, empty and
over-long lines, one output line per input line, atomic files, stdin/stdout) unchanged.

Search settings map to CTranslate2's `translate_batch`: beam_size, nbest (num_hypotheses),
length_penalty, and the maximum length a·S + b of each sentence (S counts the EOS, as in
`nmt.search`). Two differences remain, documented in the README: CTranslate2 divides a
hypothesis's log-probability by length^α, not GNMT's ((5 + length) / 6)^α, so with α > 0 beam
search may rank hypotheses differently; and the scores it reports (n-best TSV) are its own.
Greedy search (beam size 1) gives the same tokens as nmt's, up to float rounding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf.errors import OmegaConfBaseException

from nmt.config import DecodeConfig, from_dict
from nmt.ct2_export import (
    METADATA_FORMAT,
    METADATA_NAME,
    SRC_SPM_NAME,
    TGT_SPM_NAME,
    require_ctranslate2,
)
from nmt.data.batching import plan_batches
from nmt.errors import UserError
from nmt.search import Hypothesis
from nmt.tokenizer import Tokenizer
from nmt.translator import Translator
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID

try:
    import ctranslate2
except ImportError:  # `require_ctranslate2` says how to install it
    ctranslate2 = None

log = logging.getLogger(__name__)

# translate.precision -> CTranslate2's compute_type; auto keeps the exported weights' type.
COMPUTE_TYPES = {"auto": "default", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclasses.dataclass
class Ct2Search:
    """A `SearchEngine` over a `ctranslate2.Translator`: source ids in, `Hypothesis` lists out."""

    translator: ctranslate2.Translator
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer

    def __post_init__(self) -> None:
        self.tgt_ids = {piece: i for i, piece in enumerate(self.tgt_tokenizer.vocabulary())}
        self.eos = self.tgt_tokenizer.pieces([EOS_ID])[0]
        # nmt's search never emits padding or BOS (`nmt.search._next_log_probs`); nor may this.
        self.suppressed = [self.tgt_tokenizer.pieces([PAD_ID]), self.tgt_tokenizer.pieces([BOS_ID])]

    def search(
        self, src_ids: Sequence[list[int]], decode: DecodeConfig, *, max_tokens: int
    ) -> list[list[Hypothesis]]:
        """The n-best list of every source (ids without EOS), in input order, batched as
        `nmt.decoding.search_in_order` batches (sorted by length, `max_tokens` source tokens and
        `decode.max_sentences` sentences at most); an empty source gives an empty output."""
        if decode.sample:  # typed, or saved in the export: refused either way, not ignored
            raise UserError(
                "decode.sample draws outputs with nmt's own sampler: translate the checkpoint "
                "with translate.engine=torch, or set decode.sample=false"
            )
        results = [[Hypothesis([], 0.0, True)] for _ in src_ids]
        real = [i for i, ids in enumerate(src_ids) if ids]
        plan = plan_batches([len(src_ids[i]) for i in real], [0] * len(real), max_tokens,
                            pad_multiple=1, max_sentences=decode.max_sentences)  # fmt: skip
        for batch in plan:
            rows = [real[i] for i in batch]
            # As nmt.search.max_output_lengths: floor(a·S + b), S with the EOS, at least 1.
            limits = [max(1, int(decode.max_len_a * (len(src_ids[r]) + 1) + decode.max_len_b))
                      for r in rows]  # fmt: skip
            sources = [[*self.src_tokenizer.pieces(src_ids[r]), self.eos] for r in rows]
            found = self.translator.translate_batch(
                sources,
                beam_size=decode.beam_size,
                num_hypotheses=decode.nbest,
                length_penalty=decode.length_penalty,
                max_decoding_length=max(limits),
                min_decoding_length=0,  # nmt lets EOS come first
                max_input_length=0,  # `Translator.encode` has truncated already
                suppress_sequences=self.suppressed,
                return_end_token=True,
                return_scores=True,
            )
            for row, limit, result in zip(rows, limits, found, strict=True):
                results[row] = [
                    self._hypothesis(tokens, score, limit)
                    for tokens, score in zip(result.hypotheses, result.scores, strict=True)
                ]
        return results

    def _hypothesis(self, tokens: list[str], score: float, limit: int) -> Hypothesis:
        """One output cut to its own sentence's length limit (the batch decodes up to the
        longest limit of its sentences), EOS split off as nmt's search does."""
        ids = [self.tgt_ids[token] for token in tokens][:limit]
        eos = bool(ids) and ids[-1] == EOS_ID
        return Hypothesis(ids[:-1] if eos else ids, score, eos)


def load_export(folder: str | Path, *, device: str, precision: str) -> Translator:
    """A `Translator` over the `nmt export` folder `folder` (translate.ckpt), decoding with
    CTranslate2 on `device` (translate.device: auto picks CUDA when CTranslate2 sees a GPU) in
    `precision` (translate.precision: auto keeps the exported weights' type)."""
    require_ctranslate2("translate.engine=ctranslate2")
    path = Path(folder)
    metadata_path = path / METADATA_NAME
    if not metadata_path.is_file():
        raise UserError(
            f"translate.ckpt={path} is not an nmt export folder (no {METADATA_NAME}): write one "
            "with `nmt export`, or use translate.engine=torch for a checkpoint"
        )
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except ValueError:  # a damaged file (JSON or UTF-8)
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != METADATA_FORMAT:
        raise UserError(
            f"{metadata_path} is damaged or was written by another version of nmt: export again"
        )
    try:
        cfg = from_dict(metadata["config"])
    except OmegaConfBaseException as error:
        raise UserError(
            f"{metadata_path} holds a config this version of nmt does not read "
            f"({str(error).splitlines()[0]}): export the checkpoint again"
        ) from None
    ct2_device = _device(device)
    try:
        translator = ctranslate2.Translator(
            str(path),
            device=ct2_device,
            compute_type=COMPUTE_TYPES[precision],
            intra_threads=torch.get_num_threads(),
        )
    except (RuntimeError, ValueError) as error:
        raise UserError(
            f"CTranslate2 cannot load {path} ({str(error).splitlines()[0]}): export again, or "
            "choose another translate.precision"
        ) from None
    src_tokenizer, tgt_tokenizer = Tokenizer(path / SRC_SPM_NAME), Tokenizer(path / TGT_SPM_NAME)
    log.info("CTranslate2 export: %s (checkpoint %s, step %d, weights: %s) on %s", path,
             metadata["checkpoint"], metadata["step"], metadata["quantization"],
             ct2_device)  # fmt: skip
    engine = Ct2Search(translator, src_tokenizer, tgt_tokenizer)
    return Translator(None, src_tokenizer, tgt_tokenizer, cfg, path, metadata["step"],
                      torch.device(ct2_device), torch.float32, engine=engine)  # fmt: skip


def _device(device: str) -> str:
    """translate.device as CTranslate2 names it."""
    has_cuda = ctranslate2.get_cuda_device_count() > 0
    if device == "cuda" and not has_cuda:
        raise UserError(
            "translate.device=cuda, but CTranslate2 sees no CUDA device: use translate.device=cpu"
        )
    return "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"

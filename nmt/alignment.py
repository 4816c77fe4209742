"""Word alignments read off attention, in Pharaoh format, and how good they are: the alignment
error rate against reference links, and the grow-diag-final-and symmetrisation that turns a
statistical aligner's two directions into one reference.

A link (i, j) says source word i and target word j translate each other; words are the
whitespace tokens of a line and indices start at 0 (Pharaoh `i-j`, as fast_align and eflomal
write). Letters: T target subwords, S source subwords.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

Link = tuple[int, int]  # (source word, target word)


def word_links(
    attn: Tensor, src_words: Sequence[int | None], tgt_words: Sequence[int | None]
) -> list[Link]:
    """One link per target word: to the source word its subwords attend to most.

    `attn` (T', S') is attention over subwords (rows: output pieces, columns: source pieces)
    with at least T = len(tgt_words) rows and S = len(src_words) columns; rows and columns past
    those (the EOS step, the source EOS) are ignored. `src_words` / `tgt_words` give the word of
    each piece (None: no word; `Tokenizer.source_words`, `output_words`). A source word gets the
    sum of its pieces' attention (the probability mass on that word); a target word the mean of
    its pieces' rows (still a distribution). Sorted by source, then target word.
    """
    src_index = [(piece, word) for piece, word in enumerate(src_words) if word is not None]
    tgt_index = [(piece, word) for piece, word in enumerate(tgt_words) if word is not None]
    if not src_index or not tgt_index:
        return []
    attn = attn.float()
    num_src = max(word for _, word in src_index) + 1
    num_tgt = max(word for _, word in tgt_index) + 1
    src_pool = torch.zeros(len(src_words), num_src)  # (S, source words) one-hot
    src_pool[[p for p, _ in src_index], [w for _, w in src_index]] = 1.0
    tgt_pool = torch.zeros(num_tgt, len(tgt_words))  # (target words, T) one-hot
    tgt_pool[[w for _, w in tgt_index], [p for p, _ in tgt_index]] = 1.0
    by_word = tgt_pool @ attn[: len(tgt_words), : len(src_words)] @ src_pool
    by_word = by_word / tgt_pool.sum(dim=1, keepdim=True).clamp(min=1.0)
    has_pieces = tgt_pool.sum(dim=1) > 0  # a word made of nothing but dropped pieces: no link
    best = by_word.argmax(dim=1).tolist()
    return sorted((best[j], j) for j in range(num_tgt) if has_pieces[j])


def format_pharaoh(links: Iterable[Link]) -> str:
    """'0-0 1-2 2-1': Pharaoh `src-tgt` pairs, sorted."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


def parse_pharaoh(line: str) -> set[Link]:
    """The links of one Pharaoh line ('0-0 1-2'; eflomal's and fast_align's output format).
    Raises ValueError on anything else."""
    links = set()
    for pair in line.split():
        src, sep, tgt = pair.partition("-")
        if not sep or not src.isdigit() or not tgt.isdigit():
            raise ValueError(f"not a Pharaoh link: {pair!r}")
        links.add((int(src), int(tgt)))
    return links


def alignment_error_rate(
    hypotheses: Sequence[set[Link]],
    sure: Sequence[set[Link]],
    possible: Sequence[set[Link]] | None = None,
) -> float:
    """Corpus AER = 1 − (|A∩S| + |A∩P|) / (|A| + |S|), sums over sentences (Och & Ney 2003).

    `possible` defaults to `sure` (a reference without "possible" links, such as a statistical
    aligner's): then AER = 1 − F1 of the link sets. 0 = the same links; 1 = none in common.
    """
    possible = sure if possible is None else possible
    if not len(hypotheses) == len(sure) == len(possible):
        raise ValueError(f"{len(hypotheses)} hypotheses, {len(sure)} / {len(possible)} refs")
    matched = sum(len(a & s) + len(a & (p | s)) for a, s, p in zip(hypotheses, sure, possible))
    total = sum(len(a) + len(s) for a, s in zip(hypotheses, sure))
    return 1.0 - matched / total if total else 0.0


_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def grow_diag_final_and(forward: set[Link], reverse: set[Link]) -> set[Link]:
    """Symmetrise the links of the two directions of a statistical aligner (both `src-tgt`),
    as Moses' grow-diag-final-and (Koehn, Och & Marcu 2003): start from their intersection,
    add union links next to (diagonals included) a link already kept while one of their words
    is still unaligned, then union links whose two words are both still unaligned."""
    union = forward | reverse
    links = forward & reverse
    src_aligned = {i for i, _ in links}
    tgt_aligned = {j for _, j in links}

    def add(link: Link) -> None:
        links.add(link)
        src_aligned.add(link[0])
        tgt_aligned.add(link[1])

    grown = True
    while grown:
        grown = False
        for i, j in sorted(links, key=lambda link: (link[1], link[0])):
            for di, dj in _NEIGHBOURS:
                new = (i + di, j + dj)
                if (
                    new in union
                    and new not in links
                    and (new[0] not in src_aligned or new[1] not in tgt_aligned)
                ):
                    add(new)
                    grown = True
    for direction in (forward, reverse):
        for i, j in sorted(direction, key=lambda link: (link[1], link[0])):
            if i not in src_aligned and j not in tgt_aligned:
                add((i, j))
    return links

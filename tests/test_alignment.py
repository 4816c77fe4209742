"""Word alignments from attention (nmt.alignment): pooling subwords into words, the Pharaoh
format, the alignment error rate and grow-diag-final-and, each on cases worked out by hand."""

from __future__ import annotations

import pytest
import torch

from nmt.alignment import (
    alignment_error_rate,
    format_pharaoh,
    grow_diag_final_and,
    parse_pharaoh,
    word_links,
)


def test_source_words_sum_their_pieces_and_target_words_average_theirs():
    # Source pieces: word 0 = piece 0, word 1 = pieces 1 and 2, then EOS (column 3).
    # Target pieces: word 0 = piece 0, word 1 = pieces 1 and 2, then the EOS step (row 3).
    attn = torch.tensor(
        [
            [0.40, 0.30, 0.30, 0.00],  # word 0: 0.4 on word 0 but 0.3 + 0.3 on word 1
            [0.90, 0.05, 0.05, 0.00],  # word 1, first piece: word 0
            [0.00, 0.50, 0.20, 0.30],  # word 1, second piece: the mean (0.45, 0.40) is word 0
            [0.00, 0.00, 0.00, 1.00],  # EOS step: ignored
        ]
    )
    assert word_links(attn, [0, 1, 1], [0, 1, 1]) == [(0, 1), (1, 0)]
    # The same rows with target word 1 split in two: each its own argmax
    assert word_links(attn, [0, 1, 1], [0, 1, 2]) == [(0, 1), (1, 0), (1, 2)]
    # The source EOS column never wins, even holding most of the attention
    eos_heavy = torch.tensor([[0.1, 0.2, 0.0, 0.7]])
    assert word_links(eos_heavy, [0, 1, 1], [0]) == [(1, 0)]


def test_pieces_without_a_word_and_empty_sides_give_no_links():
    attn = torch.full((3, 3), 1 / 3)
    assert word_links(attn, [], [0, 1]) == []
    assert word_links(attn, [0, 1], []) == []
    assert word_links(attn, [None, None], [0]) == []
    assert [j for _, j in word_links(attn, [0, 0], [0, None, 1])] == [0, 1]


def test_pharaoh_round_trip_and_bad_lines():
    links = {(2, 0), (0, 1), (0, 0), (10, 3)}
    line = format_pharaoh(links)
    assert line == "0-0 0-1 2-0 10-3"
    assert parse_pharaoh(line) == links
    assert parse_pharaoh("") == set() == parse_pharaoh("  \n")
    for bad in ("0-", "a-1", "1:2", "0-1-2", "-1-2"):
        with pytest.raises(ValueError, match="not a Pharaoh link"):
            parse_pharaoh(bad)


def test_alignment_error_rate():
    same = [{(0, 0), (1, 1)}, {(0, 1)}]
    assert alignment_error_rate(same, same) == 0.0
    assert alignment_error_rate([{(0, 1)}], [{(0, 0)}]) == 1.0
    # Corpus-level: |A∩S| = 1 + 1, |A| = 2 + 1, |S| = 2 + 2 -> 1 - (2 + 2) / (3 + 4)
    hyps = [{(0, 0), (1, 2)}, {(0, 0)}]
    refs = [{(0, 0), (1, 1)}, {(0, 0), (1, 1)}]
    assert alignment_error_rate(hyps, refs) == pytest.approx(1 - 4 / 7)
    # A found possible link counts once (A∩P), a sure one twice (A∩S, A∩P): 1 - (0 + 1)/(1 + 1)
    assert alignment_error_rate([{(1, 2)}], [{(0, 0)}], [{(1, 2)}]) == pytest.approx(0.5)
    assert alignment_error_rate([set()], [set()]) == 0.0
    with pytest.raises(ValueError):
        alignment_error_rate([set()], [])


def test_grow_diag_final_and():
    forward = {(0, 0), (1, 1), (2, 1), (3, 3)}
    reverse = {(0, 0), (1, 1), (1, 2), (4, 4), (3, 4)}
    # Intersection (0,0) (1,1); grown with the diagonal/adjacent union links (2,1) and (1,2),
    # whose source or target word was unaligned; final-and adds (3,3) (both words unaligned),
    # then (4,4) of the reverse links, while (3,4) finds word 3 aligned by then.
    assert grow_diag_final_and(forward, reverse) == {
        (0, 0), (1, 1), (2, 1), (1, 2), (3, 3), (4, 4)
    }  # fmt: skip
    assert grow_diag_final_and(forward, forward) == forward
    assert grow_diag_final_and(set(), reverse) <= reverse

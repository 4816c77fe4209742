"""How well a checkpoint's attention aligns words: alignment error rate (AER) of the links
`nmt translate translate.alignments=FILE` writes, against eflomal's, per attention layer.

For each split (default val and test_2016_flickr) the checkpoint translates the source with its
own search settings. eflomal (`pip install -e '.[align]'`), a statistical aligner, then aligns
the training corpus plus those (source, nmt output) pairs in both directions, and the two
directions are symmetrised with grow-diag-final-and: the reference links S = P. nmt's links
for the same pairs come from the attention of each choice below, read by teacher-forcing the
output (the same attention search carries: tests/test_search.py), mapped to words as
`nmt translate` maps them (nmt.alignment.word_links). Words are the whitespace tokens of the
cleaned source and of the detokenized output, on both sides; eflomal lowercases them.

Choices: the RNN's one attention; for a Transformer each decoder layer averaged over its
heads, each single head, and all layers averaged. A diagonal baseline (target word j links to
source word round(j·m/n)) gives the scale. Choose `translate.alignment_layer` on val, never on
test.

    python scripts/alignment_error_rate.py /work/runs/tf_de_en_s1 --output aer_tf.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from nmt.alignment import (
    Link,
    alignment_error_rate,
    grow_diag_final_and,
    parse_pharaoh,
    word_links,
)
from nmt.config import TranslateConfig
from nmt.data.clean import normalize
from nmt.data.corpus import load_split
from nmt.translator import Translator
from nmt.vocab import BOS_ID, EOS_ID

# A choice maps the per-layer attention of one sentence, (L, N, T, S), to (T, S).
Choice = Callable[[Tensor], Tensor]


def choices(translator: Translator) -> dict[str, Choice]:
    model = translator.ckpt_cfg.model
    if model.arch != "transformer":
        return {"attention": lambda attn: attn[-1].mean(0)}
    found: dict[str, Choice] = {}
    for layer in range(model.num_decoder_layers):
        found[f"layer {layer} (heads averaged)"] = lambda attn, k=layer: attn[k].mean(0)
    found["all layers averaged"] = lambda attn: attn.mean((0, 1))
    for layer in range(model.num_decoder_layers):
        for head in range(model.num_heads):
            found[f"layer {layer} head {head}"] = lambda attn, k=layer, h=head: attn[k, h]
    return found


@torch.inference_mode()
def attention_links(
    translator: Translator, texts: list[str], src_ids: list[list[int]], outputs: list[list[int]]
) -> dict[str, list[set[Link]]]:
    """Per choice, the word links of every (source, output) pair, from teacher forcing."""
    model, found = translator.model.eval(), choices(translator)
    links: dict[str, list[set[Link]]] = {name: [] for name in found}
    for text, ids, tokens in zip(texts, src_ids, outputs):
        if not ids or not tokens:
            for name in found:
                links[name].append(set())
            continue
        src = torch.tensor([[*ids, EOS_ID]])
        tgt_in = torch.tensor([[BOS_ID, *tokens]])
        out = model(src, torch.ones_like(src, dtype=torch.bool), tgt_in, need_attention=True)
        attn = torch.stack([layer[0] for layer in out.layer_attn])  # (L, N, T, S)
        src_words = translator.src_tokenizer.source_words(text)[: len(ids)]
        tgt_words = translator.tgt_tokenizer.output_words(tokens)
        for name, choose in found.items():
            links[name].append(set(word_links(choose(attn), src_words, tgt_words)))
    return links


def diagonal_links(src: str, tgt: str) -> set[Link]:
    m, n = len(src.split()), len(tgt.split())
    return {(min(m - 1, round(j * m / n)), j) for j in range(n)} if m and n else set()


def eflomal_links(
    train: list[tuple[str, str]], pairs: list[tuple[str, str]], work: Path
) -> list[set[Link]]:
    """eflomal over `train` + `pairs`, both directions, grow-diag-final-and; links of `pairs`."""
    import eflomal  # an optional extra (`.[align]`): only this script needs it

    every = [*train, *pairs]
    (work / "src.txt").write_text("".join(f"{s}\n" for s, _ in every), encoding="utf-8")
    (work / "tgt.txt").write_text("".join(f"{t}\n" for _, t in every), encoding="utf-8")
    fwd, rev = work / "fwd.links", work / "rev.links"
    with open(work / "src.txt", encoding="utf-8") as src, open(work / "tgt.txt") as tgt:
        eflomal.Aligner().align(src, tgt, links_filename_fwd=str(fwd), links_filename_rev=str(rev))
    forward = fwd.read_text(encoding="utf-8").split("\n")[len(train) : len(every)]
    reverse = rev.read_text(encoding="utf-8").split("\n")[len(train) : len(every)]
    forward_links = [parse_pharaoh(line) for line in forward]
    reverse_links = [parse_pharaoh(line) for line in reverse]
    # Both directions are written src-tgt: were one transposed, they would barely agree.
    agree = sum(len(f & r) for f, r in zip(forward_links, reverse_links))
    print(f"eflomal: the two directions share {agree / max(1, sum(map(len, forward_links))):.0%} "
          "of the forward links")  # fmt: skip
    return [grow_diag_final_and(f, r) for f, r in zip(forward_links, reverse_links, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "ckpt",
        help="a checkpoint file or a run directory (the model it kept: best.pt or averaged.pt)",
    )
    parser.add_argument("--splits", nargs="+", help="default: val and the test splits")
    parser.add_argument("--data-root", help="the corpus folder, if not where training read it")
    parser.add_argument("--output", type=Path, help="JSON of every row")
    args = parser.parse_args()
    started = time.perf_counter()
    translator = Translator.load(args.ckpt, device="cpu", precision="fp32")
    data_cfg = translator.ckpt_cfg.data
    if args.data_root:
        data_cfg = dataclasses.replace(data_cfg, root=args.data_root)
    form = data_cfg.clean.normalization
    decode = translator.ckpt_cfg.decode
    budget = {"max_tokens": TranslateConfig().max_tokens, "chunk_lines": 100_000}
    splits = args.splits or [data_cfg.valid_split, *data_cfg.test_splits]
    with tempfile.TemporaryDirectory() as tmp:
        raw_train = load_split(data_cfg, data_cfg.train_split, Path(tmp))
        raw = {split: load_split(data_cfg, split, Path(tmp)) for split in splits}
    train = [(normalize(s, form), normalize(t, form)) for s, t in
             zip(raw_train["src"], raw_train["tgt"])]  # fmt: skip
    train = [(s, t) for s, t in train if s and t]

    pairs: list[tuple[str, str]] = []
    spans, links = {}, {}
    for split in splits:
        results = list(translator.translate(raw[split]["src"], decode, **budget))
        texts = [text for text, _, _ in results]
        outputs = [nbest[0].tokens for _, nbest, _ in results]
        hyps = [translator.detokenize(nbest[0]) for _, nbest, _ in results]
        links[split] = attention_links(translator, texts, [ids for *_, ids in results], outputs)
        links[split]["diagonal baseline"] = [diagonal_links(s, t) for s, t in zip(texts, hyps)]
        spans[split] = (len(pairs), len(pairs) + len(texts))
        pairs += list(zip(texts, hyps))
        print(
            f"translated {split} ({len(texts)} sentences) at {time.perf_counter() - started:.0f} s"
        )
    with tempfile.TemporaryDirectory() as tmp:
        reference = eflomal_links(train, pairs, Path(tmp))
    print(f"eflomal done at {time.perf_counter() - started:.0f} s")

    rows = []
    for name in links[splits[0]]:
        row = {"attention": name}
        for split in splits:
            start, end = spans[split]
            row[split] = alignment_error_rate(links[split][name], reference[start:end])
        rows.append(row)
    print(f"\nAER (%) against eflomal grow-diag-final-and, {translator.path}, "
          f"search: beam {decode.beam_size}, alpha {decode.length_penalty:g}")  # fmt: skip
    print(f"{'attention':<28}" + "".join(f" {split:>18}" for split in splits))
    for row in rows:
        print(f"{row['attention']:<28}" + "".join(f" {100 * row[s]:>18.1f}" for s in splits))
    if args.output:
        record = {"checkpoint": str(translator.path), "decode": dataclasses.asdict(decode),
                  "train_pairs": len(train), "rows": rows}  # fmt: skip
        args.output.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

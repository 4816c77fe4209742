"""Choose beam size and length penalty on the validation split (never on a test split).

Translates the checkpoint's validation split once per (beam size, GNMT α) pair, greedy (beam 1)
once with α 0 (its other search settings as the checkpoint's run had them, always searching),
prints BLEU and chrF (sacreBLEU, detokenized and cased, against the raw references) and marks
the best BLEU; the rows go to JSON as well. Set the winner in the experiment's `decode:` block.

    python scripts/tune_decoding.py runs/transformer_multi30k_de_en/main \\
        --beams 1 5 10 --alphas 0.6 1.0 1.4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from nmt.config import TranslateConfig
from nmt.data.corpus import load_split
from nmt.translate import translate_and_score
from nmt.translator import Translator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "ckpt",
        help="a checkpoint file or a run directory (the model it kept: best.pt or averaged.pt)",
    )
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.6, 1.0, 1.4])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", help="the corpus folder, if not where training read it")
    parser.add_argument("--output", type=Path, help="default: tune_decoding.json beside ckpt")
    args = parser.parse_args()
    translator = Translator.load(args.ckpt, device=args.device, precision="auto")
    data_cfg = translator.ckpt_cfg.data
    if args.data_root:
        data_cfg = dataclasses.replace(data_cfg, root=args.data_root)
    defaults = TranslateConfig()  # batching as `nmt translate` does it by default
    budget = {"max_tokens": defaults.max_tokens, "chunk_lines": defaults.chunk_lines}
    with tempfile.TemporaryDirectory() as tmp:
        raw = load_split(data_cfg, data_cfg.valid_split, Path(tmp))
    rows = []
    for beam in args.beams:  # α only changes how finished beams compare: greedy needs one
        for alpha in args.alphas if beam > 1 else [0.0]:
            decode = dataclasses.replace(  # searched, even if the checkpoint's run sampled
                translator.ckpt_cfg.decode, beam_size=beam, length_penalty=alpha, nbest=1,
                sample=False,
            )  # fmt: skip
            _, scores = translate_and_score(translator, raw, decode, **budget)
            rows.append({"beam": beam, "alpha": alpha, **dataclasses.asdict(scores)})
    best = max(rows, key=lambda row: row["bleu"])
    print(f"{data_cfg.valid_split} ({len(raw)} sentences), {args.ckpt}")
    print(f"{'beam':>4} {'alpha':>5} {'BLEU':>7} {'chrF':>7}")
    for row in rows:
        mark = "  <- best" if row is best else ""
        print(
            f"{row['beam']:>4} {row['alpha']:>5.1f} {row['bleu']:>7.2f} {row['chrf']:>7.2f}{mark}"
        )
    print(f"BLEU signature: {best['bleu_signature']} (detokenized, cased, raw references)")
    ckpt = Path(args.ckpt)
    output = args.output or (ckpt if ckpt.is_dir() else ckpt.parent) / "tune_decoding.json"
    output.write_text(json.dumps({"checkpoint": str(ckpt), "split": data_cfg.valid_split,
                                  "rows": rows, "best": best}, indent=2))  # fmt: skip
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

"""nmt's own beam search against CTranslate2 (fp32 and int8 weights) on one test set: sentences/s
and sacreBLEU, on the same threads, through the same `Translator` path (cleaning, truncation,
length-sorted batches, detokenization) as `nmt translate` with translate.engine=torch or
ctranslate2.

The three engines run interleaved: the test set is cut into slices and every slice is
translated by each engine in turn (rotating who goes first), so a machine whose load changes
during the run slows all three alike; ratios are the numbers to trust on a shared machine.

    python scripts/bench_ct2.py --ckpt runs/tf_de_en/best.pt --threads 2 \
        --src ../shared/data/multi30k/test_2016_flickr.de.gz \
        --ref ../shared/data/multi30k/test_2016_flickr.en.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import ctranslate2
import sacrebleu
import torch

from nmt.config import TranslateConfig
from nmt.ct2_engine import load_export
from nmt.ct2_export import export_checkpoint
from nmt.device import cpu_model
from nmt.translator import Translator


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        return file.read().split("\n")[:-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a Transformer checkpoint or run directory")
    parser.add_argument("--src", type=Path, required=True, help="source sentences (.gz allowed)")
    parser.add_argument("--ref", type=Path, required=True, help="reference translations")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, every engine")
    parser.add_argument("--slices", type=int, default=8, help="interleaving slices of the set")
    parser.add_argument("--sentences", type=int, help="only the first N sentences")
    parser.add_argument("--export-dir", type=Path, default=Path("bench_results/ct2_export"))
    parser.add_argument("--output", type=Path, default=Path("bench_results/bench_ct2.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # CTranslate2's intra_threads follows it (load_export)
    sources = read_lines(args.src)[: args.sentences]
    references = read_lines(args.ref)[: len(sources)]

    translators = {"nmt": Translator.load(args.ckpt, device="cpu", precision="fp32")}
    for quantization, name in (("none", "ct2 fp32"), ("int8", "ct2 int8")):
        folder = export_checkpoint(args.ckpt, args.export_dir / quantization,
                                   quantization=quantization)  # fmt: skip
        translators[name] = load_export(folder, device="cpu", precision="auto")
    decode = replace(translators["nmt"].ckpt_cfg.decode, beam_size=args.beam, nbest=1)
    budget = {"max_tokens": TranslateConfig().max_tokens, "chunk_lines": len(sources) + 1}

    outputs: dict[str, list[str]] = {name: [] for name in translators}
    seconds = dict.fromkeys(translators, 0.0)
    size = -(-len(sources) // args.slices)
    load_before = os.getloadavg()
    for index, start in enumerate(range(0, len(sources), size)):
        piece = sources[start : start + size]
        names = list(translators)
        names = names[index % len(names) :] + names[: index % len(names)]  # rotate the order
        for name in names:
            translator = translators[name]
            began = time.perf_counter()
            results = translator.translate(piece, decode, **budget)
            outputs[name] += [translator.detokenize(nbest[0]) for _, nbest, _ in results]
            seconds[name] += time.perf_counter() - began
    load_after = os.getloadavg()

    rows, metric = [], sacrebleu.BLEU()
    for name, hypotheses in outputs.items():
        bleu = metric.corpus_score(hypotheses, [references])
        same = sum(h == n for h, n in zip(hypotheses, outputs["nmt"], strict=True))
        rows.append({"engine": name, "sentences_per_s": len(sources) / seconds[name],
                     "seconds": seconds[name], "bleu": bleu.score,
                     "speedup_vs_nmt": seconds["nmt"] / seconds[name],
                     "same_as_nmt": same / len(sources)})  # fmt: skip
    print(f"{'engine':<9} {'sent/s':>8} {'x nmt':>6} {'BLEU':>6} {'= nmt':>6}")
    for r in rows:
        print(f"{r['engine']:<9} {r['sentences_per_s']:>8.1f} {r['speedup_vs_nmt']:>6.2f} "
              f"{r['bleu']:>6.2f} {r['same_as_nmt']:>6.1%}")  # fmt: skip
    signature = str(metric.get_signature())
    print(f"BLEU signature: {signature}")
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        "threads": args.threads,
        "torch": torch.__version__,
        "ctranslate2": ctranslate2.__version__,
        "checkpoint": str(translators["nmt"].path),
        "step": translators["nmt"].step,
        "sentences": len(sources),
        "decode": vars(decode),
        "bleu_signature": signature,
        "results": rows,
    }
    print(f"CPU: {record['cpu']}, {args.threads} threads; load average before "
          f"{load_before[0]:.1f}, after {load_after[0]:.1f}")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

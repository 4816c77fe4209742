"""Decoding speed: sentences/s and target tokens/s for greedy and beam search at several batch
sizes, with the key/value cache and (optionally) without it, i.e. re-running the decoder over
the whole prefix at every step.

With `--ckpt` and `--input` it translates real text with a trained model; otherwise a freshly
initialised model decodes synthetic sources (it rarely emits EOS, so every sentence runs to
its maximum length: a worst case).

    python scripts/bench_decode.py                                  # CPU, small synthetic run
    python scripts/bench_decode.py --ckpt runs/x/y --input test.de --device cuda --no-cache
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from nmt.config import DecodeConfig, TranslateConfig, model_config
from nmt.data.batching import chunks, collate
from nmt.decoding import search
from nmt.device import autocast, cpu_model, resolve_device, resolve_precision
from nmt.models import build_model
from nmt.models.base import DecoderOutput, Memory, Seq2Seq, State
from nmt.translator import Translator
from nmt.vocab import EOS_ID


class WithoutCache(Seq2Seq):
    """The same model, decoding each step by re-running the decoder over the whole prefix."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.inner = model

    def encode(self, src, src_mask) -> Memory:
        return self.inner.encode(src, src_mask)

    def decode(self, tgt_in, memory, state: State | None = None, need_attention=False):
        prefix = tgt_in if state is None else torch.cat([state["prefix"], tgt_in], dim=1)
        out = self.inner.decode(prefix, memory, None, need_attention)
        steps = tgt_in.size(1)
        attn = out.attn[:, -steps:] if out.attn is not None else None
        return DecoderOutput(out.logits[:, -steps:], {"prefix": prefix}, attn)


def workload(args, device) -> tuple[Seq2Seq, list[list[int]]]:
    """A model and source id lists: from a checkpoint and file, or synthetic."""
    if args.ckpt:
        translator = Translator.load(args.ckpt, device=args.device, precision="fp32")
        lines = Path(args.input).read_text(encoding="utf-8").splitlines()[: args.sentences]
        decode, max_tokens = translator.ckpt_cfg.decode, TranslateConfig().max_tokens
        return translator.model, translator.encode(lines, decode, max_tokens)
    cfg = model_config(args.model)
    torch.manual_seed(0)
    model = build_model(cfg, args.vocab, args.vocab).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(
        args.length // 2, args.length * 3 // 2 + 1, (args.sentences,), generator=generator
    )
    return model, [
        torch.randint(EOS_ID + 1, args.vocab, (int(n),), generator=generator).tolist()
        for n in lengths
    ]


def run(model, sources, decode: DecodeConfig, batch_size: int, device, dtype) -> dict:
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    num_tokens = 0
    start = time.perf_counter()
    for rows in chunks(order, batch_size):
        batch = collate([sources[i] for i in rows], [[] for _ in rows], rows, pad_multiple=1)
        with torch.inference_mode(), autocast(device, dtype):
            result = search(model, batch.src.to(device), batch.src_mask.to(device), decode)
        num_tokens += sum(len(tokens) + 1 for tokens in result.tokens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"sentences_per_s": len(sources) / seconds, "tgt_tokens_per_s": num_tokens / seconds,
            "seconds": seconds, "tgt_tokens": num_tokens}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--ckpt", help="a checkpoint or run directory (with --input)")
    parser.add_argument("--input", help="source sentences, one a line")
    parser.add_argument("--model", default="transformer_small", help="synthetic: model config")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--length", type=int, default=15, help="synthetic: mean source length")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--no-cache", action="store_true", help="also decode without the cache")
    parser.add_argument("--output", type=Path, default=Path("bench_results/bench_decode.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    model, sources = workload(args, device)
    variants = [("cache", model)] + ([("no cache", WithoutCache(model))] if args.no_cache else [])
    rows = []
    for beam in args.beams:
        decode = replace(DecodeConfig(), beam_size=beam, length_penalty=1.0 if beam > 1 else 0.0)
        for batch_size in args.batch_sizes:
            for name, variant in variants:
                result = run(variant, sources, decode, batch_size, device, dtype)
                rows.append({"beam": beam, "batch": batch_size, "mode": name, **result})
    print(f"{'beam':>4} {'batch':>5} {'mode':<9} {'sent/s':>9} {'tgt tok/s':>10}")
    for r in rows:
        print(f"{r['beam']:>4} {r['batch']:>5} {r['mode']:<9} {r['sentences_per_s']:>9.1f} "
              f"{r['tgt_tokens_per_s']:>10.0f}")  # fmt: skip
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": str(dtype),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

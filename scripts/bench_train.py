"""Training throughput: target and source+target tokens/s, peak memory and (on GPU) MFU.

Synthetic batches of fixed-length sentences (by default Multi30k-like 15 and WMT-like 25
subwords) run the real training step (autocast forward, label-smoothed loss, backward, clip,
AdamW) for each model, length, precision and eager/compiled mode; the table is printed and
written as JSON.

    python scripts/bench_train.py                       # CPU defaults: small sizes, fp32
    python scripts/bench_train.py --device cuda --models transformer_base rnn_bahdanau \\
        --precisions fp32 bf16 --compile both --steps 50
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nmt.config import TrainConfig, model_config
from nmt.device import autocast, cpu_model, resolve_device, resolve_precision
from nmt.models import build_model, model_summary
from nmt.optim import make_optimizer
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID


def synthetic_batch(batch_size: int, length: int, vocab: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(EOS_ID + 1, vocab, (batch_size, length), generator=generator)
    src = torch.cat([words, torch.full((batch_size, 1), EOS_ID)], 1).to(device)
    tgt_in = torch.cat([torch.full((batch_size, 1), BOS_ID), words], 1).to(device)
    tgt_out = torch.cat([words, torch.full((batch_size, 1), EOS_ID)], 1).to(device)
    return src, src != PAD_ID, tgt_in, tgt_out


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s: the denominator of model-FLOPs utilisation."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start, repeats = time.perf_counter(), 20 if device.type == "cuda" else 3
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(
    name: str, precision: str, compiled: bool, length: int, args, device: torch.device
) -> dict:
    torch.manual_seed(0)
    cfg = model_config(name)
    model = build_model(cfg, args.vocab, args.vocab).to(device)
    dtype = resolve_precision(precision, device)
    optimizer = make_optimizer(model, TrainConfig(), device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    forward = torch.compile(model) if compiled else model
    batch_size = max(1, args.max_tokens // (2 * (length + 1)))
    src, src_mask, tgt_in, tgt_out = synthetic_batch(batch_size, length, args.vocab, device)

    def step() -> None:
        with autocast(device, dtype):
            logits = forward(src, src_mask, tgt_in).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    tgt_tokens = batch_size * (length + 1) * args.steps
    summary = model_summary(model, length + 1, length + 1)
    result = {
        "model": name,
        "precision": str(dtype).removeprefix("torch."),
        "compiled": compiled,
        "parameters": summary.num_parameters,
        "batch": f"{batch_size}x{length + 1}",
        "tgt_tokens_per_s": tgt_tokens / seconds,
        "src_tgt_tokens_per_s": 2 * tgt_tokens / seconds,
        "flops_per_tgt_token": summary.flops_per_token,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        peak = args.peak_flops.setdefault(str(dtype), matmul_peak_flops(device, dtype))
        result["mfu"] = summary.flops_per_token * result["tgt_tokens_per_s"] / peak
    else:  # the process's peak resident memory so far (Linux reports KiB)
        result["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def print_table(rows: list[dict]) -> None:
    header = f"{'model':<18} {'prec':<9} {'compiled':<8} {'params':>11} {'batch':>8} "
    header += f"{'tgt tok/s':>11} {'src+tgt/s':>11} {'peak GiB':>9} {'MFU':>6}"
    print(header)
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(
            f"{r['model']:<18} {r['precision']:<9} {r['compiled']!s:<8} {r['parameters']:>11,} "
            f"{r['batch']:>8} {r['tgt_tokens_per_s']:>11,.0f} {r['src_tgt_tokens_per_s']:>11,.0f} "
            f"{r['peak_memory_gib']:>9.2f} {mfu:>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["transformer_small", "rnn_bahdanau"])
    parser.add_argument(
        "--precisions", nargs="+", default=None, help="default: fp32 (+bf16 on GPU)"
    )
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[15, 25], help="subwords per sentence"
    )
    parser.add_argument("--max-tokens", type=int, default=4096, help="source+target per batch")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("bench_results/bench_train.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    args.peak_flops = {}
    rows = [
        bench_one(name, precision, compiled, length, args, device)
        for name in args.models
        for length in args.lengths
        for precision in precisions
        for compiled in modes
    ]
    print_table(rows)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name or device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "peak_flops")},
        "matmul_peak_flops": args.peak_flops,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

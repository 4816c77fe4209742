"""Data preparation and training start at scale: wall time and peak memory per stage.

For each size it generates a corpus of N pairs (the source corpus's training pairs, repeated
with a copy number appended to both sides, so that the text is not all duplicates), then runs
each stage as its own `nmt` process and measures it:

  prepare      `nmt data` on a cold cache: clean, SentencePiece, encode, save
  train start  `nmt train` (smoke model, train.max_steps=1) on the prepared cache: time from
               the start of `train()` to the end of the one-sentence validation after its
               first step, and peak memory beyond the same command on one copy of the source
               corpus (model, optimiser, libraries)

Peak memory is the largest single process's `ru_maxrss` (from `os.wait4`), the `nmt`
process's own anonymous memory (`RssAnon`, its workers' not counted, sampled every 0.2 s: RSS
without the pages of memory-mapped Arrow files, which the kernel reclaims at will), and the sum
over the process and its workers.
Generated files go under --work, never into the repository.

    python scripts/bench_data.py --sizes 0.1M 1M 10M --work /tmp/nmt_bench_data
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from nmt.data.lines import read_lines  # noqa: E402  (the repository, not an installed copy)
from nmt.device import cpu_model  # noqa: E402

NUM_HELD_OUT = 1_000  # validation and test lines, taken unchanged from the source corpus


def parse_size(text: str) -> int:
    """`0.1M`, `1M`, `10M`, `5k` or a plain number of pairs."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def source_file(folder: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f"no {split}.{lang}[.gz] in {folder}: set --source")


def generate(source: Path, langs: tuple[str, str], num_pairs: int, out: Path) -> None:
    """`out/{train,valid,test}.{lang}`: N training pairs; valid and test are the source's first
    training lines (also in train: this benchmark times and measures, it does not score)."""
    base = [list(read_lines(source_file(source, "train", lang))) for lang in langs]
    out.mkdir(parents=True, exist_ok=True)
    for side, lang in enumerate(langs):
        lines = base[side]
        with open(out / f"train.{lang}", "w", encoding="utf-8") as file:
            for copy in range(-(-num_pairs // len(lines))):
                count = min(len(lines), num_pairs - copy * len(lines))
                suffix = f" {copy}\n" if copy else "\n"
                file.write(suffix.join(lines[:count]) + suffix)
        for split in ("valid", "test"):
            held_out = lines[:NUM_HELD_OUT]
            (out / f"{split}.{lang}").write_text("\n".join(held_out) + "\n", encoding="utf-8")


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    total = 0
    try:
        with open(f"/proc/{pid}/statm") as file:
            total += int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                total += sum(tree_rss(int(child)) for child in file.read().split())
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return total


def anon_rss(pid: int) -> int:
    """Anonymous resident bytes of one process (0 once it is gone): its own memory, without the
    pages of memory-mapped files. Arrow files that `datasets` maps count in RSS as they are
    read, but the kernel drops those pages under pressure, so they are no memory need."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def measure(command: list[str], log: Path) -> dict:
    """Run `command`; its wall time, largest-process peak RSS and sampled tree peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}  # fmt: skip
    start = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        peak_tree, peak_anon, done = [0], [0], threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak_tree[0] = max(peak_tree[0], tree_rss(process.pid))
                peak_anon[0] = max(peak_anon[0], anon_rss(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed; see {log}:\n{log.read_text()[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # Linux reports KiB
        "peak_tree_rss_mb": round(peak_tree[0] / 2**20),
        "peak_anon_rss_mb": round(peak_anon[0] / 2**20),
    }


def data_overrides(corpus: Path, args: argparse.Namespace) -> list[str]:
    src, tgt = args.langs
    return [
        "data=local_files", f"data.root={corpus}", f"data.src_lang={src}",
        f"data.tgt_lang={tgt}", f"data.cache_dir={corpus}/cache", f"data.num_proc={args.num_proc}",
        f"data.spm.vocab_size={args.vocab_size}", "data.max_train_pairs=null",
    ]  # fmt: skip


def bench_size(num_pairs: int, args: argparse.Namespace, baseline_rss: int | None) -> list[dict]:
    corpus = args.work / f"pairs_{num_pairs}"
    shutil.rmtree(corpus, ignore_errors=True)
    started = time.perf_counter()
    generate(args.source, args.langs, num_pairs, corpus)
    print(f"{num_pairs:,} pairs generated in {time.perf_counter() - started:.0f} s", flush=True)
    nmt = [sys.executable, "-m", "nmt"]
    data = data_overrides(corpus, args)
    prepare = measure([*nmt, "data", *data], corpus / "prepare.log")
    run_dir = corpus / "run"
    train = [*nmt, "train", "experiment=smoke", *data, "train.max_steps=1",
             "train.max_valid_sentences=1", "train.num_heatmaps=0", "train.max_epochs=30",
             f"train.max_tokens={args.max_tokens}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    start = measure(train, corpus / "train.log")
    history = (run_dir / "validations.jsonl").read_text().splitlines()
    start["first_step_s"] = json.loads(history[0])["since_launch_seconds"]
    if baseline_rss is not None:
        start["rss_beyond_model_mb"] = start["peak_rss_mb"] - baseline_rss
    if not args.keep:
        shutil.rmtree(corpus, ignore_errors=True)
    return [
        {"pairs": num_pairs, "stage": "prepare", **prepare},
        {"pairs": num_pairs, "stage": "train start", **start},
    ]


def print_table(rows: list[dict], cpu: str) -> None:
    print(f"CPU: {cpu} ({os.cpu_count()} cores)")
    print(f"{'pairs':>11} {'stage':<12} {'wall s':>8} {'1st step s':>10} {'peak MB':>8} "
          f"{'anon MB':>8} {'tree MB':>8} {'beyond model MB':>15}")  # fmt: skip
    for r in rows:
        first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else "-"
        beyond = str(r["rss_beyond_model_mb"]) if "rss_beyond_model_mb" in r else "-"
        print(f"{r['pairs']:>11,} {r['stage']:<12} {r['seconds']:>8.1f} {first:>10} "
              f"{r['peak_rss_mb']:>8} {r['peak_anon_rss_mb']:>8} {r['peak_tree_rss_mb']:>8} "
              f"{beyond:>15}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["0.1M", "1M"], help="e.g. 0.1M 1M 10M")
    multi30k = os.environ.get("NMT_DATA_DIR", REPO_ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--source", type=Path, default=Path(multi30k),
                        help="folder with train.{lang}[.gz] to vary (Multi30k)")  # fmt: skip
    parser.add_argument("--langs", nargs=2, default=["de", "en"], metavar=("SRC", "TGT"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/nmt_bench_data"))
    parser.add_argument("--num-proc", type=int, default=2, help="data.num_proc")
    parser.add_argument("--vocab-size", type=int, default=8000, help="data.spm.vocab_size")
    parser.add_argument("--max-tokens", type=int, default=4096, help="train.max_tokens")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora")
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the one-copy run that 'beyond model' is measured against",
    )
    parser.add_argument("--output", type=Path, default=Path("bench_results/bench_data.json"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    baseline = None
    if args.baseline:  # one copy of the source corpus: what training holds besides the data
        keep, args.keep = args.keep, False
        num_pairs = sum(1 for _ in read_lines(source_file(args.source, "train", args.langs[0])))
        baseline = bench_size(num_pairs, args, None)[1]["peak_rss_mb"]
        args.keep = keep
    rows = [row for size in args.sizes for row in bench_size(parse_size(size), args, baseline)]
    cpu = cpu_model()
    print_table(rows, cpu)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "command": " ".join(sys.argv),
        "baseline_train_start_rss_mb": baseline,
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

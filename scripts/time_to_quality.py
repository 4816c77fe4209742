"""Time to quality: wall time from `make train` to the first checkpoint at 90% of the run's
final BLEU, and to the final BLEU itself, read from each run's `validations.jsonl`.

"Final" is the best validation BLEU of the run (the checkpoint kept as best.pt); BLEU is
sacreBLEU on detokenized, cased output of the validation split with the run's validation
search (`train.valid_beam_size`, `train.max_valid_sentences`). Times count from the start of
training (data preparation and model building included; the seconds of Python and library
imports before it not) to the end of the checkpoint's validation.

    python scripts/time_to_quality.py runs/cpu_race_de_en/2026-11-21_10-00-00 [more runs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nmt.run_dir import HISTORY_NAME


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / HISTORY_NAME
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give a run directory trained by this version")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def time_to_quality(history: list[dict], fraction: float = 0.9) -> dict:
    """The first validations reaching `fraction` of the best BLEU, and the best itself."""
    best = max(history, key=lambda record: record["bleu"])
    target = fraction * best["bleu"]
    reached = next(record for record in history if record["bleu"] >= target)
    return {
        "final_bleu": best["bleu"],
        "final_step": best["step"],
        "final_seconds": best["since_launch_seconds"],
        "fraction": fraction,
        "reached_bleu": reached["bleu"],
        "reached_step": reached["step"],
        "reached_seconds": reached["since_launch_seconds"],
        "validations": len(history),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--fraction", type=float, default=0.9)
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = [
        {"run": str(run), **time_to_quality(read_history(run), args.fraction)} for run in args.runs
    ]
    percent = f"{100 * args.fraction:.0f}%"
    print(f"{'run':<48} {'final BLEU':>10} {'step':>6} {'min':>6}  {percent + ' at':>7} "
          f"{'step':>6} {'min':>6}")  # fmt: skip
    for row in rows:
        print(f"{row['run'][-48:]:<48} {row['final_bleu']:>10.2f} {row['final_step']:>6} "
              f"{row['final_seconds'] / 60:>6.1f}  {row['reached_bleu']:>7.2f} "
              f"{row['reached_step']:>6} {row['reached_seconds'] / 60:>6.1f}")  # fmt: skip
    print("(validation BLEU: sacreBLEU, detokenized and cased, with each run's validation search)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""The README's results rows, read from finished run directories: model, direction, parameters,
device, epochs, wall time, the model the run kept (best or averaged), its test BLEU, chrF and
BLEU-lc from `make evaluate CKPT=<run dir>`, and the time to 90% and to the final val BLEU.

Runs of one experiment that differ only in their seed can be given together: with `--seeds`
they make one row whose scores are the mean ± sample standard deviation over the runs, so a
reader can tell a real difference from seed noise.

    make evaluate CKPT=runs/transformer_multi30k_de_en/<time>      # for each run first
    python scripts/results_table.py runs/transformer_multi30k_de_en/* [--seeds] [--json F]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from time_to_quality import read_history, time_to_quality

from nmt.checkpoint import load_checkpoint, step_checkpoints
from nmt.config import Config
from nmt.models import count_parameters
from nmt.run_dir import AVERAGE_NAME
from nmt.translator import Translator

SCORES = ("bleu", "chrf", "bleu_lc")


def model_words(cfg: Config) -> str:
    model = cfg.model
    if model.arch == "transformer":
        layers = f"{model.num_encoder_layers}+{model.num_decoder_layers}"
        return f"Transformer {layers} × {model.hidden_size}"
    return f"Bahdanau bi{model.rnn_type.upper()} {model.hidden_size}"


def read_log_facts(run_dir: Path) -> tuple[str, int | None]:
    """The device and the batches of an epoch, from the train.log `nmt train` writes into its
    run directory ("?" and None for a run trained without it, e.g. from Python)."""
    log_file = run_dir / "train.log"
    text = log_file.read_text(encoding="utf-8", errors="replace") if log_file.is_file() else ""
    devices = re.findall(r"precision [^,]+, device (.+)\):", text)
    batches = re.findall(r"epoch \d+: (\d+) batches", text)
    return (devices[-1] if devices else "?"), (int(batches[-1]) if batches else None)


def run_row(run_dir: Path, split: str | None) -> dict:
    """One run's facts and scores; the scores of the checkpoint the run kept as its model."""
    translator = Translator.load(run_dir, device="cpu", precision="fp32")  # the kept model
    kept, cfg = translator.path, translator.ckpt_cfg
    evaluation = run_dir / f"eval_{kept.stem}.json"
    if not evaluation.is_file():
        raise SystemExit(f"{evaluation} is missing: run `make evaluate CKPT={run_dir}` first")
    results = json.loads(evaluation.read_text())["results"]
    test = next(r for r in results if r["split"] == (split or cfg.data.test_splits[0]))
    history = read_history(run_dir)
    device, batches = read_log_facts(run_dir)
    progress = load_checkpoint(step_checkpoints(run_dir)[-1])["progress"]  # the run's end
    epochs = progress["epoch"] + (progress["epoch_batches_done"] / batches if batches else 0)
    average = run_dir / AVERAGE_NAME
    quality = time_to_quality(history)
    return {
        "run": str(run_dir),
        "experiment": cfg.name,
        "seed": cfg.train.seed,
        "model": model_words(cfg),
        "direction": f"{cfg.data.src_lang}→{cfg.data.tgt_lang}",
        "parameters": sum(count_parameters(translator.model).values()),
        "device": device,
        "epochs": round(epochs, 1),
        "steps": progress["step"],
        "wall_minutes": round(history[-1]["since_launch_seconds"] / 60, 1),
        "kept": kept.name,
        "average": json.loads(average.read_text()) if average.is_file() else None,
        "split": test["split"],
        **{score: test[score] for score in SCORES},
        "val_bleu_final": quality["final_bleu"],
        "minutes_to_90": round(quality["reached_seconds"] / 60, 1),
        "minutes_to_final": round(quality["final_seconds"] / 60, 1),
    }


def seed_row(rows: list[dict]) -> dict:
    """Runs of one experiment as one row: scores as mean and sample standard deviation."""
    names = {row["experiment"] for row in rows}
    if len(names) != 1 or len({row["seed"] for row in rows}) != len(rows):
        raise SystemExit(f"--seeds wants runs of one experiment with distinct seeds: {names}")
    merged = dict(rows[0], run=[row["run"] for row in rows], seed=[row["seed"] for row in rows])
    for score in SCORES:
        values = [row[score] for row in rows]
        merged[score] = statistics.mean(values)
        merged[f"{score}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    merged["kept"] = ", ".join(row["kept"] for row in rows)
    return merged


def markdown(row: dict) -> str:
    def score(name: str) -> str:
        std = row.get(f"{name}_std")
        return f"{row[name]:.2f}" + (f" ± {std:.2f}" if std is not None else "")

    cells = [
        f"`{row['experiment']}`", row["model"], row["direction"], f"{row['parameters']:,}",
        row["device"], f"{row['epochs']}", f"{row['wall_minutes']} min", score("bleu"),
        score("chrf"), score("bleu_lc"), row["kept"],
        f"{row['minutes_to_90']} / {row['minutes_to_final']} min",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, evaluated")
    parser.add_argument("--split", help="the test split to report (default: the first)")
    parser.add_argument("--seeds", action="store_true", help="one row: mean ± std over runs")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = [run_row(run, args.split) for run in args.runs]
    if args.seeds:
        rows = [seed_row(rows)]
    print("| experiment | model | direction | parameters | device | epochs | wall time | BLEU "
          "| chrF | BLEU-lc | model kept | to 90% / final val BLEU |")  # fmt: skip
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for row in rows:
        print(markdown(row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

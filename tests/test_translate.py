"""`nmt translate` and `nmt evaluate` as users run them: line counts, bad input, scoring."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch

from nmt.config import Config, TranslateConfig
from nmt.errors import UserError
from nmt.evaluate import evaluate_checkpoint, score_files
from nmt.train import train
from nmt.translate import Translator, translate_file
from tests.test_train import tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Config, Path]:
    """A tiny Transformer trained briefly on the toy reversal task, and its run directory."""
    tmp_path = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, "transformer", max_steps=30, validate_every=30, lr=5e-3)
    train(cfg, tmp_path / "run")
    torch.set_num_threads(threads)
    return cfg, tmp_path / "run"


def with_translate(cfg: Config, **settings) -> Config:
    return dataclasses.replace(cfg, translate=TranslateConfig(**settings))


def test_one_output_line_per_input_line(trained, tmp_path: Path, caplog):
    cfg, run_dir = trained
    lines = [b"alpha beta gamma", b"", b"   \t ", b"delta " * 2000, b"caf\xe9 \x07 mu", b"nu xi"]
    source = tmp_path / "in.txt"
    source.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "out" / "out.txt"
    report = translate_file(
        with_translate(cfg, ckpt=str(run_dir), input=str(source), output=str(output))
    )
    out_lines = output.read_text(encoding="utf-8").split("\n")
    assert len(out_lines) - 1 == len(lines) and out_lines[-1] == ""
    assert out_lines[1] == "" and out_lines[2] == ""
    assert (report.num_lines, report.empty, report.truncated) == (6, 2, 1)
    assert (report.bad_bytes, report.control) == (1, 1)
    assert "1 lines were longer than" in caplog.text
    assert not list(output.parent.glob(".*tmp"))


def test_strict_mode_names_the_line(trained, tmp_path: Path):
    cfg, run_dir = trained
    source = tmp_path / "in.txt"
    source.write_bytes(b"alpha\nbeta \xff gamma\n")
    strict = with_translate(cfg, ckpt=str(run_dir), input=str(source), strict=True,
                            output=str(tmp_path / "out.txt"))  # fmt: skip
    with pytest.raises(UserError, match=r"in\.txt:2: invalid UTF-8 byte 0xff"):
        translate_file(strict)
    assert not (tmp_path / "out.txt").exists()


def test_alone_or_in_a_batch_and_from_a_copied_checkpoint(trained, tmp_path: Path):
    cfg, run_dir = trained
    copy = tmp_path / "elsewhere" / "model.pt"
    copy.parent.mkdir()
    shutil.copy(run_dir / "best.pt", copy)
    translator = Translator.load(copy, device="cpu")
    sentences = ["alpha beta", "gamma delta epsilon zeta eta theta iota", "kappa"]
    decode = dataclasses.replace(cfg.decode, beam_size=4)
    together = [translator.detokenize(n[0]) for _, n, _ in translator.translate(sentences, decode)]
    alone = [
        translator.detokenize(next(iter(translator.translate([s], decode)))[1][0])
        for s in sentences
    ]
    assert together == alone


def test_nbest_and_attention_files(trained, tmp_path: Path):
    cfg, run_dir = trained
    source = tmp_path / "in.txt"
    source.write_text("alpha beta gamma\n\nmu nu\n")
    settings = {
        "ckpt": str(run_dir),
        "input": str(source),
        "output": str(tmp_path / "out.txt"),
        "nbest_tsv": str(tmp_path / "nbest.tsv"),
        "attention_dir": str(tmp_path / "attn"),
    }
    decode = dataclasses.replace(cfg.decode, beam_size=4, nbest=3)
    translate_file(dataclasses.replace(with_translate(cfg, **settings), decode=decode))
    rows = [line.split("\t") for line in (tmp_path / "nbest.tsv").read_text().splitlines()]
    for index in ("0", "2"):
        scores = [float(r[2]) for r in rows if r[0] == index]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert sorted(p.name for p in (tmp_path / "attn").iterdir()) == ["000000.png", "000002.png"]


def test_stdin_to_stdout_and_bad_checkpoints(trained, tmp_path: Path):
    _, run_dir = trained
    command = [sys.executable, "-m", "nmt", "translate", f"translate.ckpt={run_dir}"]
    result = subprocess.run(command, input="alpha beta\n\ngamma\n", capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split("\n")) == 4 and result.stdout.split("\n")[1] == ""
    for ckpt, message in (
        (tmp_path / "none.pt", "does not exist"),
        (tmp_path, "holds no checkpoint"),
    ):
        bad_command = [*command[:-1], f"translate.ckpt={ckpt}"]
        bad = subprocess.run(bad_command, input="x\n", capture_output=True, text=True,
                             cwd=REPO_ROOT, timeout=120)  # fmt: skip
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def test_reference_scored_against_itself_matches_sacrebleu(tmp_path: Path):
    refs = ["A man rides a horse.", "Two dogs play in the snow .", "", "Ein Mann"]
    path = tmp_path / "ref.txt"
    path.write_text("\n".join(refs) + "\n")
    hyps = tmp_path / "hyp.txt"
    hyps.write_text("A man rides horse.\nTwo dogs play in snow .\n\nEin Mann\n")
    assert score_files(path, path)["bleu"] == pytest.approx(100.0)
    row = score_files(hyps, path)
    expected = sacrebleu.corpus_bleu(hyps.read_text().splitlines(), [refs])
    assert row["bleu"] == pytest.approx(expected.score) and row["lines"] == 4
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(path), "-i", str(hyps), "-b"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert float(cli.stdout.strip()) == pytest.approx(row["bleu"], abs=0.05)
    # lowercased BLEU: "Ein Mann" matches "ein mann" only there
    shouted = tmp_path / "shouted.txt"
    shouted.write_text("a man rides a horse.\nTWO DOGS PLAY IN THE SNOW .\n\nEin Mann\n")
    lowered = score_files(shouted, path)
    assert lowered["bleu_lc"] == pytest.approx(100.0) and lowered["bleu"] < 60
    assert "case:lc" in lowered["bleu_lc_signature"]
    with pytest.raises(UserError, match="has 3 lines but"):
        (tmp_path / "short.txt").write_text("a\nb\nc\n")
        score_files(tmp_path / "short.txt", path)


def test_evaluate_checkpoint_scores_each_split(trained, tmp_path: Path):
    cfg, run_dir = trained
    record = evaluate_checkpoint(with_translate(cfg, ckpt=str(run_dir)))
    assert [row["split"] for row in record["results"]] == ["valid", "test"]
    assert Path(record["path"]) == run_dir / "eval_best.json" and Path(record["path"]).is_file()
    # the same number as sacreBLEU on the translated file against the raw reference file
    corpus = Path(cfg.data.root)
    output = tmp_path / "test.hyp"
    translate_file(with_translate(cfg, ckpt=str(run_dir), input=str(corpus / "test.src"),
                                  output=str(output)))  # fmt: skip
    direct = score_files(output, corpus / "test.tgt")["bleu"]
    assert record["results"][1]["bleu"] == pytest.approx(direct)
    # the translations are kept beside the scores, one line per reference line
    saved = Path(record["results"][1]["translations"]).read_text().splitlines()
    assert saved == output.read_text().splitlines()
    assert "case:mixed" in record["results"][1]["bleu_signature"]


def test_tune_decoding_scores_the_validation_split_per_setting(trained, tmp_path: Path):
    cfg, run_dir = trained
    output = tmp_path / "tune.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "tune_decoding.py"
    done = subprocess.run([sys.executable, str(script), str(run_dir), "--device", "cpu",
                           "--beams", "1", "3", "--alphas", "0.5", "1.0", "--output", str(output)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(output.read_text())
    assert record["split"] == cfg.data.valid_split
    assert [(row["beam"], row["alpha"]) for row in record["rows"]] == [
        (1, 0.0), (3, 0.5), (3, 1.0)
    ]  # fmt: skip
    assert record["best"]["bleu"] == max(row["bleu"] for row in record["rows"])
    # the greedy row is the same number `nmt evaluate` gives with greedy search
    greedy = evaluate_checkpoint(
        dataclasses.replace(with_translate(cfg, ckpt=str(run_dir), splits=["valid"]),
                            decode=dataclasses.replace(cfg.decode, length_penalty=0.0))
    )  # fmt: skip
    assert record["rows"][0]["bleu"] == pytest.approx(greedy["results"][0]["bleu"])
    assert "<- best" in done.stdout

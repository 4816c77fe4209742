"""`nmt translate` and `nmt evaluate` as users run them: the checkpoint's own search settings,
line counts, bad input, paths refused up front, Ctrl-C and closed pipes, and scoring."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sacrebleu
import torch

from nmt import decoding
from nmt import translate as translate_module
from nmt.alignment import parse_pharaoh
from nmt.checkpoint import load_checkpoint
from nmt.config import Config, DecodeConfig, EvaluateConfig, TranslateConfig
from nmt.errors import UserError
from nmt.search import max_output_lengths
from nmt.train import train
from nmt.translate import check_paths, evaluate_checkpoint, score_files, translate_file
from nmt.translator import Translator
from tests.test_train import tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
# The search the toy run is trained with: not the defaults, so that a command falling back to
# the command line's defaults shows.
TRAINED_DECODE = DecodeConfig(beam_size=3, length_penalty=1.4, max_len_a=1.2, max_len_b=4)
NMT = [sys.executable, "-m", "nmt"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BUDGET = {"max_tokens": TranslateConfig().max_tokens, "chunk_lines": TranslateConfig().chunk_lines}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Config, Path]:
    """A tiny Transformer trained briefly on the toy reversal task with `TRAINED_DECODE`
    (validation stays greedy), and its run directory."""
    tmp_path = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(tmp_path, "transformer", max_steps=30, validate_every=30, lr=5e-3)
    cfg = dataclasses.replace(cfg, decode=TRAINED_DECODE)
    train(cfg, tmp_path / "run")
    return cfg, tmp_path / "run"


@pytest.fixture
def searches(monkeypatch) -> list[DecodeConfig]:
    """The settings of every search call made while a test runs."""
    seen: list[DecodeConfig] = []
    real = decoding.search

    def spy(model, src, src_mask, cfg, **options):
        seen.append(cfg)
        return real(model, src, src_mask, cfg, **options)

    monkeypatch.setattr(decoding, "search", spy)
    return seen


def test_checkpoint_search_settings_hold_unless_typed(trained, tmp_path: Path, caplog, searches):
    _, run_dir = trained
    source = tmp_path / "in.txt"
    source.write_text("alpha beta gamma\nmu nu\n")
    settings = TranslateConfig(ckpt=str(run_dir), input=str(source), output=str(tmp_path / "o"))
    caplog.set_level("INFO")
    translate_file(settings)
    assert {(s.beam_size, s.length_penalty, s.max_len_a, s.max_len_b) for s in searches} == {
        (3, 1.4, 1.2, 4)
    }
    step = load_checkpoint(run_dir / "best.pt")["progress"]["step"]
    assert f"checkpoint: {run_dir / 'best.pt'} (step {step})" in caplog.text
    assert ("search: beam 3 (checkpoint), length penalty 1.4 (checkpoint), "
            "max length 1.2·src+4 (checkpoint)") in caplog.text  # fmt: skip
    caplog.clear()
    searches.clear()
    translate_file(settings, decode_overrides={"length_penalty": 0.6})
    assert {(s.beam_size, s.length_penalty) for s in searches} == {(3, 0.6)}
    assert "beam 3 (checkpoint), length penalty 0.6 (command line)" in caplog.text
    # evaluate starts the same way, and records the settings it used
    record = evaluate_checkpoint(
        TranslateConfig(ckpt=str(run_dir)), EvaluateConfig(splits=["test"])
    )
    assert record["decode"] == dataclasses.asdict(TRAINED_DECODE) and record["step"] == step
    # settings are checked once merged: the checkpoint's beam bounds a typed n-best
    with pytest.raises(UserError, match=r"decode\.nbest=5 \(command line\) exceeds "
                       r"decode\.beam_size=3 \(checkpoint\)"):  # fmt: skip
        translate_file(settings, decode_overrides={"nbest": 5})


def test_one_output_line_per_input_line(trained, tmp_path: Path, caplog):
    _, run_dir = trained
    lines = [b"alpha beta gamma", b"", b"   \t ", b"delta " * 2000, b"caf\xe9 \x07 mu", b"nu xi"]
    source = tmp_path / "in.txt"
    source.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "out" / "out.txt"
    caplog.set_level("INFO")
    # a small batch budget truncates the long line early (the model alone reads 849 subwords)
    settings = TranslateConfig(ckpt=str(run_dir), input=str(source), output=str(output),
                               max_tokens=200)  # fmt: skip
    report = translate_file(settings, decode_overrides={"beam_size": 1})
    out_lines = output.read_text(encoding="utf-8").split("\n")
    assert len(out_lines) - 1 == len(lines) and out_lines[-1] == ""
    assert out_lines[1] == "" and out_lines[2] == ""
    assert (report.num_lines, report.empty, report.truncated) == (6, 2, 1)
    assert (report.bad_bytes, report.control_chars) == (1, 1)
    assert "translated 6 lines (2 empty)" in caplog.text
    assert "1 lines were longer than 198 subwords" in caplog.text
    assert not list(output.parent.glob(".*tmp*"))


def test_strict_mode_names_the_line(trained, tmp_path: Path):
    _, run_dir = trained
    source = tmp_path / "in.txt"
    source.write_bytes(b"alpha\nbeta \xff gamma\n")
    strict = TranslateConfig(ckpt=str(run_dir), input=str(source), strict=True,
                             output=str(tmp_path / "out.txt"))  # fmt: skip
    with pytest.raises(UserError, match=r"in\.txt:2: invalid UTF-8 byte 0xff"):
        translate_file(strict)
    assert not (tmp_path / "out.txt").exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_paths_that_would_fail_late_are_refused_before_translating(tmp_path: Path):
    source = tmp_path / "in.txt"
    source.write_text("alpha\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link.txt").symlink_to(source)
    for settings, message in (
        ({"output": str(source)}, r"translate\.output=.* is the same path as translate\.input"),
        ({"output": str(tmp_path / "link.txt")}, "is the same path as translate.input"),
        ({"output": str(tmp_path / "folder")}, r"translate\.output=.*folder is a directory"),
        ({"output": str(tmp_path / "o"), "nbest_tsv": str(tmp_path / "o")},
         r"translate\.nbest_tsv=.* is the same path as translate\.output"),
        ({"nbest_tsv": str(tmp_path / "folder")}, "nbest_tsv=.* is a directory"),
        ({"attention_dir": str(source)}, r"translate\.attention_dir=.* is a file"),
        ({"alignments": str(tmp_path / "folder")}, r"translate\.alignments=.* is a directory"),
        ({"output": str(tmp_path / "o"), "alignments": str(tmp_path / "o")},
         r"translate\.alignments=.* is the same path as translate\.output"),
        ({"input": str(tmp_path / "missing.txt")}, r"input file .*missing\.txt does not exist"),
    ):  # fmt: skip
        full = {"ckpt": "never-loaded.pt", "input": str(source), **settings}
        with pytest.raises(UserError, match=message):
            check_paths(TranslateConfig(**full))
        with pytest.raises(UserError, match=message):  # before the checkpoint is even read
            translate_file(TranslateConfig(**full))
    assert source.read_text() == "alpha\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in.txt", "link.txt"]


def test_alone_or_in_a_batch_and_from_a_copied_checkpoint(trained, tmp_path: Path):
    cfg, run_dir = trained
    copy = tmp_path / "elsewhere" / "model.pt"
    copy.parent.mkdir()
    copy.write_bytes((run_dir / "best.pt").read_bytes())
    translator = Translator.load(copy, device="cpu", precision="fp32")
    assert translator.path == copy and translator.ckpt_cfg.decode == TRAINED_DECODE
    # sources are cut to what max_positions 1024 answers (1.2·(849 + 1) + 4 ≤ 1024) or a batch holds
    assert translator.max_src_len(TRAINED_DECODE, 8192) == 849
    assert translator.max_src_len(TRAINED_DECODE, 64) == 62
    # the longest output a kept source may ask for fits max_positions too, whatever a and b
    for a, b in ((2.0, 1), (3.0, 0), (1.5, 10), (1.2, 4), (0.0, 0)):
        longest = translator.max_src_len(
            dataclasses.replace(TRAINED_DECODE, max_len_a=a, max_len_b=b), 8192
        )
        with_eos = torch.ones(1, longest + 1, dtype=torch.bool)
        assert max_output_lengths(with_eos, a, b).item() <= translator.max_positions, (a, b)
    for a, b in ((0.0, 1025), (1.0, 1023)):  # not even a one-subword source could be answered
        with pytest.raises(UserError, match=r"lower decode\.max_len_b"):
            translator.max_src_len(
                dataclasses.replace(TRAINED_DECODE, max_len_a=a, max_len_b=b), 64
            )
    sentences = ["alpha beta", "gamma delta epsilon zeta eta theta iota", "kappa"]
    decode = dataclasses.replace(cfg.decode, beam_size=4)
    together = [translator.detokenize(n[0])
                for _, n, _ in translator.translate(sentences, decode, **BUDGET)]  # fmt: skip
    alone = [
        translator.detokenize(next(iter(translator.translate([s], decode, **BUDGET)))[1][0])
        for s in sentences
    ]
    assert together == alone


def test_sampling_draws_one_stream_across_input_chunks(trained):
    _, run_dir = trained
    translator = Translator.load(run_dir, device="cpu", precision="fp32")
    decode = dataclasses.replace(TRAINED_DECODE, sample=True, nbest=8, temperature=5.0)

    def samples(chunk_lines: int) -> list[list[list[int]]]:
        lines = ["alpha beta gamma"] * 2
        found = translator.translate(lines, decode, max_tokens=BUDGET["max_tokens"],
                                     chunk_lines=chunk_lines)  # fmt: skip
        return [[h.tokens for h in nbest] for _, nbest, _ in found]

    first, second = samples(chunk_lines=1)
    assert first != second  # a chunk does not restart the stream: the line draws anew
    assert samples(chunk_lines=1) == [first, second]  # and the seed still reproduces them


def test_nbest_and_attention_files(trained, tmp_path: Path):
    _, run_dir = trained
    source = tmp_path / "in.txt"
    source.write_text("alpha beta gamma\n\nmu nu\n")
    settings = TranslateConfig(ckpt=str(run_dir), input=str(source),
                               output=str(tmp_path / "out.txt"),
                               nbest_tsv=str(tmp_path / "nbest.tsv"),
                               attention_dir=str(tmp_path / "attn"))  # fmt: skip
    translate_file(settings, decode_overrides={"beam_size": 4, "nbest": 3})
    rows = [line.split("\t") for line in (tmp_path / "nbest.tsv").read_text().splitlines()]
    for index in ("0", "2"):
        scores = [float(r[2]) for r in rows if r[0] == index]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert sorted(p.name for p in (tmp_path / "attn").iterdir()) == ["000000.png", "000002.png"]


def test_stdin_to_stdout_typed_keys_and_bad_checkpoints(trained, tmp_path: Path):
    _, run_dir = trained
    command = [*NMT, "translate", f"translate.ckpt={run_dir}", "decode.beam_size=2"]
    result = subprocess.run(command, input="alpha beta\n\ngamma\n", capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=120, env=ENV)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split("\n")) == 4 and result.stdout.split("\n")[1] == ""
    assert "search: beam 2 (command line), length penalty 1.4 (checkpoint)" in result.stderr
    assert f"checkpoint: {run_dir / 'best.pt'} (step " in result.stderr
    for ckpt, message in (
        (tmp_path / "none.pt", "does not exist"),
        (tmp_path, "holds no checkpoint"),
    ):
        bad_command = [*command[:-2], f"translate.ckpt={ckpt}"]
        bad = subprocess.run(bad_command, input="x\n", capture_output=True, text=True,
                             cwd=REPO_ROOT, timeout=120, env=ENV)  # fmt: skip
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def assert_one_quiet_line(stderr: str, line: str) -> None:
    """Nothing but log lines and the one closing `line`: no traceback, no exit-time noise."""
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.splitlines()[-1] == line, stderr
    assert sum(not text.startswith("[") for text in stderr.splitlines()) == 1, stderr


def test_closed_stdout_stops_quietly(trained, tmp_path: Path):
    # `nmt translate < in | head -1`, with head gone before the first write: the pipe's
    # reader is closed at once, so the command's first write to stdout fails.
    _, run_dir = trained
    source = tmp_path / "in.txt"
    source.write_text("alpha beta\ngamma\n" * 20)
    with open(source) as stdin:
        process = subprocess.Popen([*NMT, "translate", f"translate.ckpt={run_dir}"],
                                   stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, cwd=REPO_ROOT, env=ENV)  # fmt: skip
        process.stdout.close()
        stderr = process.stderr.read()
        assert process.wait(timeout=120) == 141
    assert_one_quiet_line(stderr, "nmt: stdout was closed; stopped")


def interrupt(args: list[str], *, after_line: str | None, delay: float) -> tuple[int, str]:
    """Run `nmt` with `args`, send SIGINT `delay` s after stderr shows `after_line` (or after
    the start), and return its exit status and stderr."""
    process = subprocess.Popen([*NMT, *args], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, cwd=REPO_ROOT, env=ENV)  # fmt: skip
    lines = []
    if after_line is not None:
        for line in process.stderr:
            lines.append(line)
            if after_line in line:
                break
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    lines.extend(process.stderr)
    return process.wait(timeout=60), "".join(lines)


def test_ctrl_c_leaves_no_output_and_no_traceback(trained, tmp_path: Path):
    _, run_dir = trained
    source = tmp_path / "in.txt"
    source.write_text("alpha beta gamma delta epsilon zeta eta theta\n" * 20_000)
    output = tmp_path / "out.txt"
    output.write_text("the previous translation\n")
    args = ["translate", f"translate.ckpt={run_dir}", f"translate.input={source}",
            f"translate.output={output}"]  # fmt: skip
    status, stderr = interrupt(args, after_line="search:", delay=1.0)
    assert status == 130, stderr
    assert_one_quiet_line(stderr, "nmt: interrupted")
    assert output.read_text() == "the previous translation\n"  # untouched, no partial output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]
    # during start-up, while Python imports Hydra and PyTorch
    status, stderr = interrupt(args, after_line=None, delay=1.0)
    assert status == 130, stderr  # -2 before exit_interrupted used os._exit (test_cli.py)
    assert_one_quiet_line(stderr, "nmt: interrupted")


def test_make_translate_writes_translations_only_to_stdout(trained):
    _, run_dir = trained
    command = ["make", "translate", f"CKPT={run_dir}", f"NMT={sys.executable} -m nmt"]
    # As a user types it: not inside `make test ARGS=...`, whose variables a nested make inherits.
    env = {k: v for k, v in ENV.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "ARGS")}
    result = subprocess.run(command, input="alpha beta\ngamma\n", capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2, result.stdout
    assert "translate.ckpt" not in result.stdout and "make" not in result.stdout


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
    # a last line without its newline still counts, on either side
    unterminated = tmp_path / "unterminated.txt"
    unterminated.write_text("\n".join(refs))
    assert score_files(unterminated, path)["lines"] == 4
    assert score_files(unterminated, path)["bleu"] == pytest.approx(100.0)


def test_evaluate_beside_a_read_only_checkpoint_is_refused_before_translating(trained, monkeypatch):
    _, run_dir = trained
    real_access = os.access

    def read_only_run_dir(path, mode, *args, **kwargs):
        return not (Path(path) == run_dir and mode & os.W_OK) and real_access(path, mode)

    def never(*args, **kwargs):
        raise AssertionError("translated before refusing")

    monkeypatch.setattr(os, "access", read_only_run_dir)
    monkeypatch.setattr(translate_module, "translate_and_score", never)
    with pytest.raises(UserError, match=r"beside the checkpoint, but .* is not writable"):
        evaluate_checkpoint(TranslateConfig(ckpt=str(run_dir)), EvaluateConfig())


def test_evaluate_checkpoint_scores_each_split(trained, tmp_path: Path):
    cfg, run_dir = trained
    record = evaluate_checkpoint(TranslateConfig(ckpt=str(run_dir)), EvaluateConfig())
    assert [row["split"] for row in record["results"]] == ["valid", "test"]
    twice = EvaluateConfig(splits=["test", "valid", "test"])
    once_each = evaluate_checkpoint(TranslateConfig(ckpt=str(run_dir)), twice)["results"]
    assert [row["split"] for row in once_each] == ["test", "valid"]  # each split once
    assert Path(record["path"]) == run_dir / "eval_best.json" and Path(record["path"]).is_file()
    # the same number as sacreBLEU on the translated file against the raw reference file
    corpus = Path(cfg.data.root)
    output = tmp_path / "test.hyp"
    translate_file(TranslateConfig(ckpt=str(run_dir), input=str(corpus / "test.src"),
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
                          capture_output=True, text=True, timeout=300, env=ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(output.read_text())
    assert record["split"] == cfg.data.valid_split
    assert [(row["beam"], row["alpha"]) for row in record["rows"]] == [
        (1, 0.0), (3, 0.5), (3, 1.0)
    ]  # fmt: skip
    assert record["best"]["bleu"] == max(row["bleu"] for row in record["rows"])
    # the greedy row is the same number `nmt evaluate decode=greedy` gives
    greedy = evaluate_checkpoint(
        TranslateConfig(ckpt=str(run_dir)),
        EvaluateConfig(splits=["valid"]),
        decode_overrides={"beam_size": 1, "length_penalty": 0.0},
    )
    assert record["rows"][0]["bleu"] == pytest.approx(greedy["results"][0]["bleu"])
    assert "<- best" in done.stdout


@pytest.fixture(scope="module", params=["rnn", "transformer"])
def barely_trained(request, tmp_path_factory) -> Path:
    """A run directory whose model trained one step: its outputs are long (the toy `trained`
    ends most sentences at once), which gives alignments many words to link."""
    tmp_path = tmp_path_factory.mktemp(f"barely_{request.param}")
    train(tiny_config(tmp_path, request.param, max_steps=1, validate_every=1), tmp_path / "run")
    return tmp_path / "run"


def test_word_alignments_file(barely_trained: Path, tmp_path: Path):
    """`translate.alignments=FILE`: a Pharaoh line per input line, one link per output word to a
    word of the (cleaned, possibly truncated) source, in greedy and beam search; empty lines
    give empty lines."""
    lines = [b"alpha beta gamma", b"", b"   \t ", b"delta " * 300, b"caf\xe9 \x07 mu", b"nu  xi"]
    source = tmp_path / "in.txt"
    source.write_bytes(b"\n".join(lines) + b"\n")
    sources = source.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]
    for beam_size in (1, 3):
        output, alignments = tmp_path / f"out{beam_size}.txt", tmp_path / f"out{beam_size}.align"
        settings = TranslateConfig(ckpt=str(barely_trained), input=str(source), output=str(output),
                                   alignments=str(alignments), max_tokens=200)  # fmt: skip
        translate_file(settings, decode_overrides={"beam_size": beam_size})
        outputs = output.read_text(encoding="utf-8").split("\n")[:-1]
        rows = alignments.read_text(encoding="utf-8").split("\n")[:-1]
        assert len(rows) == len(lines) and rows[1] == rows[2] == ""
        assert any(out.split() for out in outputs)  # not vacuous
        for src, out, row in zip(sources, outputs, rows):
            links = parse_pharaoh(row)
            assert sorted(j for _, j in links) == list(range(len(out.split())))
            assert all(i < len(src.split()) for i, _ in links)
        assert all(i < 198 for i, _ in parse_pharaoh(rows[3]))  # past the truncation: no links
    if "rnn" in str(barely_trained):
        with pytest.raises(UserError, match=r"alignment_layer=1 is out of range: .* 1 attention"):
            translate_file(dataclasses.replace(settings, alignment_layer=1))
        return
    # another layer and heads: the same translations, links of their own
    other = dataclasses.replace(settings, output=str(tmp_path / "other.txt"),
                                alignments=str(tmp_path / "other.align"),
                                alignment_layer=0, alignment_heads=[1])  # fmt: skip
    translate_file(other, decode_overrides={"beam_size": 3})
    assert (tmp_path / "other.txt").read_text() == output.read_text()
    assert (tmp_path / "other.align").read_text() != alignments.read_text()
    for change, message in (
        ({"alignment_layer": 2}, r"translate\.alignment_layer=2 is out of range: .* 2 attention"),
        ({"alignment_layer": -3}, r"translate\.alignment_layer=-3 is out of range"),
        ({"alignment_heads": [2]}, r"translate\.alignment_heads=\[2\] is out of range: .* 2 head"),
    ):
        with pytest.raises(UserError, match=message):
            translate_file(dataclasses.replace(settings, **change))

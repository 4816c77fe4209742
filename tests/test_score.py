"""`nmt score` (forced decoding), ensembles of checkpoints (`translate.ensemble`) and sampling,
as users run them on tiny trained checkpoints: scores agree with step-by-step decoding and
with beam search, one line per pair whatever the input, one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.config import EvaluateConfig, ScoreConfig, TranslateConfig
from nmt.data.batching import collate
from nmt.decoding import search_in_order
from nmt.errors import UserError
from nmt.models.ensemble import Ensemble
from nmt.score import score_pairs
from nmt.scoring import force_decode, score_in_order
from nmt.search import _next_log_probs
from nmt.train import train
from nmt.translate import evaluate_checkpoint, translate_file
from nmt.translator import Translator
from nmt.vocab import EOS_ID
from tests.test_train import tiny_config
from tests.toy import toy_data_config

REPO_ROOT = Path(__file__).resolve().parents[1]
NMT = [sys.executable, "-m", "nmt"]
CPU = {"device": "cpu", "precision": "fp32"}
BUDGET = {"max_tokens": 8192, "max_sentences": 64, "chunk_lines": 20_000}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run directories of a tiny Transformer and a tiny RNN trained on the same toy corpus
    (one SentencePiece model), and one trained with another vocabulary."""
    tmp_path = tmp_path_factory.mktemp("runs")
    found = {}
    for arch in ("transformer", "rnn"):
        cfg = tiny_config(tmp_path, arch, max_steps=30, validate_every=30, lr=5e-3)
        train(cfg, tmp_path / arch)
        found[arch] = tmp_path / arch
    cfg = tiny_config(tmp_path, "rnn", max_steps=2, validate_every=2)
    other_data = toy_data_config(Path(cfg.data.root), tmp_path / "other_cache", vocab_size=320)
    train(dataclasses.replace(cfg, data=other_data), tmp_path / "other_vocab")
    found["other_vocab"] = tmp_path / "other_vocab"
    found["corpus"] = Path(cfg.data.root)
    return found


@torch.no_grad()
def step_by_step(translator: Translator, src_ids: list[int], tgt_ids: list[int]) -> float:
    """Σ log p of the target and EOS, one `decode` call per token with the returned state."""
    padded = collate([src_ids], [tgt_ids], [0], pad_multiple=1)
    model = translator.model
    memory, state, total = model.encode(padded.src, padded.src_mask), None, 0.0
    for t in range(padded.tgt_in.size(1)):
        out = model.decode(padded.tgt_in[:, t : t + 1], memory, state)
        total += float(_next_log_probs(out.logits)[0, padded.tgt_out[0, t]])
        state = out.state
    return total


@pytest.mark.parametrize("arch", ["transformer", "rnn"])
def test_a_pair_scores_the_sum_of_its_step_by_step_log_probabilities(runs, arch):
    translator = Translator.load(runs[arch], **CPU)
    pairs = [("alpha beta gamma", "gamma beta alpha"), ("delta", "a b c d e f"), ("x y", "y")]
    scores = list(translator.score(pairs, **BUDGET))
    for (src, tgt), score in zip(pairs, scores):
        src_ids, tgt_ids = translator.src_tokenizer.encode([src, tgt])
        assert score.num_tokens == len(tgt_ids) + 1  # EOS counts
        assert score.log_prob == pytest.approx(step_by_step(translator, src_ids, tgt_ids), abs=1e-4)
        assert score.average == pytest.approx(score.log_prob / score.num_tokens)
    # a batch of one holds a pair exactly as big as max_tokens, (S + 1) + (T + 1), not more
    src_ids = translator.src_tokenizer.encode([pairs[0][0]])[0]
    tgt_ids = translator.tgt_tokenizer.encode([pairs[0][1]])[0]
    size = len(src_ids) + len(tgt_ids) + 2
    (fits,) = translator.score(pairs[:1], **{**BUDGET, "max_tokens": size})
    (too_big,) = translator.score(pairs[:1], **{**BUDGET, "max_tokens": size - 1})
    assert fits.log_prob == pytest.approx(scores[0].log_prob, abs=1e-4)
    assert too_big.num_tokens == 0 and math.isnan(too_big.log_prob)


@pytest.mark.parametrize("ensemble", [False, True])
def test_the_score_of_beam_search_output_is_its_beam_score(runs, ensemble):
    """Every n-best hypothesis (α = 0), forced through the model (with EOS if it ended with
    one; `force_decode` scores exactly the steps given), scores what beam search gave it."""
    members = [runs["rnn"]] if ensemble else []
    translator = Translator.load(runs["transformer"], ensemble=members, **CPU)
    decode = dataclasses.replace(translator.ckpt_cfg.decode, beam_size=4, nbest=3,
                                 length_penalty=0.0)  # fmt: skip
    lines = (runs["corpus"] / "test.src").read_text().splitlines()[:4]
    sources = translator.src_tokenizer.encode(lines)
    nbest = search_in_order(translator.model, sources, decode, device=torch.device("cpu"),
                            precision=torch.float32, max_tokens=1000)  # fmt: skip
    for src_ids, hyps in zip(sources, nbest):
        assert len(hyps) == 3
        for hyp in hyps:
            steps = [*hyp.tokens, EOS_ID] if hyp.eos else hyp.tokens
            padded = collate([src_ids], [steps[:-1]], [0], pad_multiple=1)
            forced = force_decode(translator.model, padded.src, padded.src_mask,
                                  padded.tgt_in, torch.tensor([steps]))  # fmt: skip
            assert float(forced) == pytest.approx(hyp.score, abs=1e-4)
    # a finished output scored through the command's path (EOS added) gives the same number;
    # an empty one is not scored there (nan), like any pair with an empty side
    finished = [(s, h) for s, hyps in zip(sources, nbest) for h in hyps if h.eos and h.tokens]
    forced = score_in_order(translator.model, [s for s, _ in finished],
                            [h.tokens for _, h in finished], device=torch.device("cpu"),
                            precision=torch.float32, max_tokens=1000, max_sentences=64)  # fmt: skip
    for (_, hyp), score in zip(finished, forced):
        assert score.log_prob == pytest.approx(hyp.score, abs=1e-4)


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_score_writes_one_line_per_pair_whatever_the_input(runs, tmp_path):
    source = write(
        tmp_path / "src", b"alpha beta\n\n  \ngamma \xff delta\nbeta\n" + b"alpha " * 1100
    )
    target = write(tmp_path / "tgt", b"beta alpha\nx\ny\ndelta gamma\n\nb\n")
    output = tmp_path / "out" / "scores.tsv"
    settings = TranslateConfig(ckpt=str(runs["transformer"]), **CPU)
    scores = score_pairs(settings, ScoreConfig(source=source, target=target, output=str(output)))
    lines = output.read_text().split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 6 == len(scores)
    fields = [line.split("\t") for line in lines[:-1]]
    # empty or whitespace-only side, or longer than the model reads: nan, 0 tokens
    for row in (1, 2, 4, 5):
        assert fields[row] == ["nan", "nan", "0"], fields
    for row in (0, 3):  # bad bytes are replaced and the pair scored
        log_prob, average, tokens = (
            float(fields[row][0]),
            float(fields[row][1]),
            int(fields[row][2]),
        )
        assert log_prob < 0 and tokens > 1 and average == pytest.approx(log_prob / tokens, abs=1e-3)
    assert [p.name for p in output.parent.iterdir()] == ["scores.tsv"]  # no temporary left
    # a TSV of the same pairs gives the same lines
    src_lines, tgt_lines = (
        Path(source).read_bytes().split(b"\n"),
        Path(target).read_bytes().split(b"\n"),
    )
    tsv = write(
        tmp_path / "pairs.tsv", b"\n".join(s + b"\t" + t for s, t in zip(src_lines, tgt_lines))
    )
    from_tsv = tmp_path / "from_tsv.tsv"
    score_pairs(settings, ScoreConfig(tsv=tsv, output=str(from_tsv)))
    assert from_tsv.read_text() == output.read_text()


def test_score_refuses_bad_input_with_one_line(runs, tmp_path):
    settings = TranslateConfig(ckpt=str(runs["transformer"]), **CPU)
    three, two = write(tmp_path / "a", b"x\ny\nz"), write(tmp_path / "b", b"x\ny\n")
    no_tab = write(tmp_path / "c.tsv", b"x\ty\nonly source\n")
    for score, message in (
        (ScoreConfig(source=three, target=two), rf"{three} \(score.source\) has 3 lines but "
                                                  rf"{two} \(score.target\) has 2"),
        (ScoreConfig(source=three), "give score.source=FILE and score.target=FILE"),
        (ScoreConfig(tsv=no_tab), r"c.tsv:2: no tab"),
        (ScoreConfig(source=str(tmp_path / "missing"), target=two), "does not exist"),
        (ScoreConfig(source=three, target=three, output=three), "same path as score.source"),
    ):  # fmt: skip
        with pytest.raises(UserError, match=message) as error:
            score_pairs(settings, score)
        assert "\n" not in str(error.value)


def test_an_ensemble_of_a_checkpoint_with_itself_gives_its_outputs_and_scores(runs, tmp_path):
    src = write(tmp_path / "in", b"alpha beta\ngamma delta epsilon\n\nzeta eta\n")
    single = TranslateConfig(ckpt=str(runs["transformer"]), input=src, **CPU)
    doubled = dataclasses.replace(single, ensemble=[str(runs["transformer"] / "best.pt")])
    for settings, name in ((single, "single"), (doubled, "doubled")):
        translate_file(dataclasses.replace(settings, output=str(tmp_path / f"{name}.out"),
                                           nbest_tsv=str(tmp_path / f"{name}.tsv")),
                       decode_overrides={"nbest": 2, "beam_size": 3})  # fmt: skip
    assert (tmp_path / "single.out").read_text() == (tmp_path / "doubled.out").read_text()
    rows = [[line.split("\t") for line in (tmp_path / f"{n}.tsv").read_text().splitlines()]
            for n in ("single", "doubled")]  # fmt: skip
    assert [r[3] for r in rows[0]] == [r[3] for r in rows[1]]
    assert [float(r[2]) for r in rows[0]] == pytest.approx([float(r[2]) for r in rows[1]], abs=2e-4)
    pairs = ScoreConfig(source=src, target=src)
    assert [s.log_prob for s in score_pairs(doubled, pairs)] == pytest.approx(
        [s.log_prob for s in score_pairs(single, pairs)], abs=1e-4, nan_ok=True
    )


def test_a_mixed_architecture_ensemble_evaluates_and_refuses_another_vocabulary(runs):
    settings = TranslateConfig(ckpt=str(runs["transformer"]), ensemble=[str(runs["rnn"])], **CPU)
    translator = Translator.load(settings.ckpt, ensemble=settings.ensemble, **CPU)
    assert isinstance(translator.model, Ensemble) and len(translator.model.members) == 2
    record = evaluate_checkpoint(settings, EvaluateConfig(splits=["test"]))
    assert Path(record["path"]).name == "eval_best+rnn.best.json"
    assert record["ensemble"] == [str(runs["rnn"] / "best.pt")]
    assert record["results"][0]["lines"] > 0 and math.isfinite(record["results"][0]["bleu"])
    with pytest.raises(UserError, match="has another target SentencePiece model") as error:
        Translator.load(settings.ckpt, ensemble=[runs["other_vocab"]], **CPU)
    assert "\n" not in str(error.value) and "other_vocab" in str(error.value)


def test_score_translate_and_sampling_from_the_command_line(runs, tmp_path):
    src = write(tmp_path / "in.txt", b"alpha beta\n\ngamma delta\n")
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    ckpt = [f"translate.ckpt={runs['transformer']}", f"translate.ensemble=[{runs['rnn']}]"]
    scored = subprocess.run([*NMT, "score", *ckpt, f"score.source={src}", f"score.target={src}"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                            env=env)  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert len(scored.stdout.splitlines()) == 3 and scored.stdout.splitlines()[1] == "nan\tnan\t0"
    assert "ensemble of 2 checkpoints" in scored.stderr
    nbest = tmp_path / "samples.tsv"
    sample = [*NMT, "translate", ckpt[0], f"translate.input={src}",
              f"translate.nbest_tsv={nbest}", "decode.sample=true", "decode.nbest=4",
              "decode.top_p=0.9", "decode.seed=3"]  # fmt: skip
    first = subprocess.run(sample, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                           env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "search: sampling (command line), 4 per sentence (command line)" in first.stderr
    assert "top-p 0.9 (command line), seed 3 (command line)" in first.stderr
    rows = nbest.read_text().splitlines()
    assert len(first.stdout.splitlines()) == 3 and len(rows) == 4 + 1 + 4
    bad = subprocess.run([*sample, "decode.temperature=0"], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120, env=env)  # fmt: skip
    assert bad.returncode == 2 and "decode.temperature=0" in bad.stderr
    assert "Traceback" not in bad.stderr

"""`nmt export` and `translate.engine=ctranslate2`: the exported model searches greedily to the
same tokens as nmt's own model (pre-norm and post-norm, tied and untied embeddings), the engine
keeps the translate command's one-line-per-input policy, and an RNN is refused in one line."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import save_checkpoint
from nmt.config import Config, DecodeConfig, ExportConfig, TranslateConfig
from nmt.config_checks import check_config
from nmt.errors import UserError
from nmt.models import build_model
from nmt.tokenizer import Tokenizer, train_tokenizer
from nmt.translate import translate_file
from nmt.translator import Translator
from tests.conftest import TINY_MODEL_CONFIG
from tests.test_bench import run_script
from tests.toy import toy_pairs

pytest.importorskip("ctranslate2", reason="ctranslate2 is an optional extra: nmt[ctranslate2]")

from nmt.ct2_engine import load_export  # after the skip: needs ctranslate2
from nmt.ct2_export import export_checkpoint

GREEDY = DecodeConfig(beam_size=1, max_len_a=1.2, max_len_b=4)
BUDGET = {"max_tokens": 8192, "chunk_lines": 7}  # several chunks over the test sentences
NMT = [sys.executable, "-m", "nmt"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, bytes]:
    """SentencePiece models of the toy corpus (with byte fallback, 256 byte pieces): a joint
    one, and a source and a target one of different sizes (so that a source/target mix-up in
    the export cannot pass)."""
    folder = tmp_path_factory.mktemp("spm")
    pairs = toy_pairs(200)
    sides = {
        "joint": ([text for pair in pairs for text in pair], 300),
        "src": ([src for src, _ in pairs], 300),
        "tgt": ([tgt for _, tgt in pairs], 290),
    }
    config = Config().data.spm
    models = {}
    for name, (texts, size) in sides.items():
        train_tokenizer(texts, folder / name, dataclasses.replace(config, vocab_size=size))
        models[name] = (folder / f"{name}.model").read_bytes()
    return models


def write_checkpoint(path: Path, tokenizers: dict[str, bytes], **model_settings) -> Path:
    """A randomly initialised tiny model (fixed seed) saved as training saves it. Every
    parameter is perturbed, so zero biases and identity LayerNorms cannot hide a weight that
    the export maps to the wrong place."""
    model_cfg = dataclasses.replace(TINY_MODEL_CONFIG, **model_settings)
    tied = model_cfg.tie_embeddings
    src_spm, tgt_spm = (
        (tokenizers["joint"],) * 2 if tied else (tokenizers["src"], tokenizers["tgt"])
    )
    cfg = Config(model=model_cfg, decode=GREEDY)
    cfg.data.root = "unused"  # the model is not trained here
    cfg.data.spm.joint = tied
    torch.manual_seed(0)
    model = build_model(model_cfg, Tokenizer(src_spm).vocab_size, Tokenizer(tgt_spm).vocab_size)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    state = {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "src_spm": src_spm,
             "tgt_spm": tgt_spm, "progress": {"step": 7}}  # fmt: skip
    save_checkpoint(state, path)
    return path


def sources() -> list[str]:
    """Toy sentences, and words the toy vocabulary lacks (byte fallback)."""
    return [src for src, _ in toy_pairs(20, seed=5)] + ["alpha Zürich beta", "xi"]


def greedy_outputs(
    translator: Translator, lines: list[str] | None = None
) -> list[tuple[list[int], bool]]:
    """Token ids and EOS flag of each greedy output (of `sources()` unless `lines`)."""
    results = translator.translate(lines or sources(), GREEDY, **BUDGET)
    return [(nbest[0].tokens, nbest[0].eos) for _, nbest, _ in results]


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_exported_model_searches_greedily_as_nmt(
    tmp_path: Path, tokenizers, norm_first: bool, tie_embeddings: bool
):
    ckpt = write_checkpoint(tmp_path / "model.pt", tokenizers, norm_first=norm_first,
                            tie_embeddings=tie_embeddings)  # fmt: skip
    folder = export_checkpoint(ckpt, tmp_path / "ct2", quantization="none")
    expected = greedy_outputs(Translator.load(ckpt, device="cpu", precision="fp32"))
    exported = load_export(folder, device="cpu", precision="auto")
    assert exported.step == 7 and exported.ckpt_cfg.model.norm_first == norm_first
    assert greedy_outputs(exported) == expected
    assert sum(len(tokens) for tokens, _ in expected) > 5 * len(expected)  # not trivially short


@pytest.mark.multi30k
@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_exported_model_searches_multi30k_val_greedily_as_nmt(
    tmp_path: Path, tokenizers, multi30k_root: Path, norm_first: bool, tie_embeddings: bool
):
    """Real sentences (German through the toy vocabulary: mostly byte pieces, many truncated
    at max_positions), the first 40 of val."""
    with gzip.open(multi30k_root / "val.de.gz", "rt", encoding="utf-8") as file:
        lines = [next(file).rstrip("\n") for _ in range(40)]
    ckpt = write_checkpoint(tmp_path / "model.pt", tokenizers, norm_first=norm_first,
                            tie_embeddings=tie_embeddings)  # fmt: skip
    folder = export_checkpoint(ckpt, tmp_path / "ct2", quantization="none")
    expected = greedy_outputs(Translator.load(ckpt, device="cpu", precision="fp32"), lines)
    assert greedy_outputs(load_export(folder, device="cpu", precision="auto"), lines) == expected


def test_learned_positions_and_int8_weights_export(tmp_path: Path, tokenizers):
    """Learned position embeddings are written as the table they are; int8 weights load and
    translate every line (their output may differ slightly from fp32)."""
    ckpt = write_checkpoint(tmp_path / "model.pt", tokenizers, learned_positions=True)
    expected = greedy_outputs(Translator.load(ckpt, device="cpu", precision="fp32"))
    fp32 = export_checkpoint(ckpt, tmp_path / "fp32", quantization="none")
    assert greedy_outputs(load_export(fp32, device="cpu", precision="auto")) == expected
    int8 = export_checkpoint(ckpt, tmp_path / "int8", quantization="int8")
    assert (int8 / "model.bin").stat().st_size < (fp32 / "model.bin").stat().st_size / 2
    assert len(greedy_outputs(load_export(int8, device="cpu", precision="auto"))) == len(sources())


def test_engine_keeps_one_line_per_input_line(tmp_path: Path, tokenizers):
    ckpt = write_checkpoint(tmp_path / "model.pt", tokenizers)
    folder = export_checkpoint(ckpt, tmp_path / "ct2", quantization="none")
    lines = ["", "alpha beta", "   ", "gamma " * 200, "delta\x07 eta", "", "mu nu"]
    source = tmp_path / "input.txt"
    source.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    outputs = {}
    for engine, path in (("torch", ckpt), ("ctranslate2", folder)):
        output = tmp_path / f"out.{engine}"
        settings = TranslateConfig(ckpt=str(path), input=str(source), output=str(output),
                                   device="cpu", engine=engine)  # fmt: skip
        report = translate_file(settings)
        assert (report.num_lines, report.empty, report.truncated) == (7, 3, 1)
        outputs[engine] = output.read_text(encoding="utf-8").split("\n")
    assert len(outputs["ctranslate2"]) == len(lines) + 1  # the last line ends with \n too
    assert [outputs["ctranslate2"][i] for i in (0, 2, 5)] == ["", "", ""]
    assert outputs["ctranslate2"] == outputs["torch"]
    assert not list(tmp_path.glob(".*tmp*"))  # output renamed into place
    # sampling is nmt's own: the engine refuses it rather than search instead
    settings = TranslateConfig(ckpt=str(folder), input=str(source), output=str(output),
                               device="cpu", engine="ctranslate2")  # fmt: skip
    with pytest.raises(UserError, match=r"decode\.sample draws outputs with nmt's own sampler"):
        translate_file(settings, decode_overrides={"sample": True})
    assert output.read_text(encoding="utf-8").split("\n") == outputs["torch"]  # left as it was


def test_rnn_and_wrong_folders_are_refused_in_one_line(tmp_path: Path, tokenizers):
    rnn = write_checkpoint(tmp_path / "rnn.pt", tokenizers, arch="rnn")
    with pytest.raises(UserError, match="CTranslate2 has no RNN decoder"):
        export_checkpoint(rnn, tmp_path / "ct2", quantization="none")
    assert not (tmp_path / "ct2").exists()
    with pytest.raises(UserError, match="not an nmt export folder"):
        load_export(tmp_path, device="cpu", precision="auto")
    (tmp_path / "nmt_export.json").write_text('{"format": ')  # cut short
    with pytest.raises(UserError, match=r"nmt_export\.json is damaged or was written by another"):
        load_export(tmp_path, device="cpu", precision="auto")
    (tmp_path / "nmt_export.json").unlink()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    transformer = write_checkpoint(tmp_path / "tf.pt", tokenizers)
    with pytest.raises(UserError, match="is not an nmt export: choose a new folder"):
        export_checkpoint(transformer, tmp_path / "other", quantization="none")


def test_decode_settings_typed_at_export_are_saved(tmp_path: Path, tokenizers):
    ckpt = write_checkpoint(tmp_path / "tf.pt", tokenizers)
    typed = {"beam_size": 3, "length_penalty": 0.6}
    folder = export_checkpoint(ckpt, tmp_path / "ct2", quantization="none", decode_overrides=typed)
    decode = load_export(folder, device="cpu", precision="auto").ckpt_cfg.decode
    assert (decode.beam_size, decode.length_penalty, decode.max_len_b) == (3, 0.6, GREEDY.max_len_b)


def test_export_command_refuses_an_rnn_in_one_line(tmp_path: Path, tokenizers):
    rnn = write_checkpoint(tmp_path / "rnn.pt", tokenizers, arch="rnn")
    done = subprocess.run([*NMT, "export", f"translate.ckpt={rnn}", f"export.output={tmp_path}/x"],
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("nmt: error:")]
    assert len(errors) == 1 and "CTranslate2 has no RNN decoder" in errors[0]
    assert not (tmp_path / "x").exists()


def test_bench_script_times_and_scores_the_three_engines(tmp_path: Path, tokenizers):
    ckpt = write_checkpoint(tmp_path / "tf.pt", tokenizers)
    pairs = toy_pairs(6, seed=9)
    (tmp_path / "src.txt").write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "ref.txt").write_text("".join(f"{t}\n" for _, t in pairs), encoding="utf-8")
    out = tmp_path / "bench.json"
    stdout = run_script("bench_ct2.py", "--ckpt", str(ckpt), "--src", str(tmp_path / "src.txt"),
                        "--ref", str(tmp_path / "ref.txt"), "--beam", "2", "--threads", "1",
                        "--slices", "3", "--export-dir", str(tmp_path / "exports"),
                        "--output", str(out))  # fmt: skip
    record = json.loads(out.read_text())
    assert [row["engine"] for row in record["results"]] == ["nmt", "ct2 fp32", "ct2 int8"]
    assert all(row["sentences_per_s"] > 0 for row in record["results"])
    assert record["results"][0]["same_as_nmt"] == 1.0 and record["sentences"] == len(pairs)
    assert record["cpu"] in stdout and "BLEU signature" in stdout


def test_settings_the_engine_cannot_honour_are_refused_up_front():
    for key, value in (("attention_dir", "heatmaps"), ("alignments", "out.align")):
        cfg = Config(translate=TranslateConfig(engine="ctranslate2", **{key: value}))
        cfg.data.root = "unused"
        with pytest.raises(UserError, match=rf"translate\.{key} reads nmt's own attention"):
            check_config(cfg)
    cfg = Config(export=ExportConfig(quantization="int4"))
    cfg.data.root = "unused"
    with pytest.raises(UserError, match=r"export\.quantization=int4 is not a choice"):
        check_config(cfg)

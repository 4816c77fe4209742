"""The `nmt` command as a user runs it: statistics, cache hits, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nmt.cli import decode_overrides
from nmt.config import CONFIG_DIR, to_config
from nmt.errors import UserError
from tests.toy import write_toy_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_nmt(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nmt", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def local_corpus(tmp_path: Path) -> list[str]:
    root = write_toy_corpus(tmp_path / "corpus", {"train": 100, "valid": 10, "test": 10})
    return [
        "data=local_files",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.spm.vocab_size=300",
    ]


def test_data_prints_statistics_then_hits_the_cache(tmp_path: Path):
    args = local_corpus(tmp_path)
    first = run_nmt("data", *args)
    assert first.returncode == 0, first.stderr
    assert "train" in first.stdout and "cache miss" in first.stdout
    assert "joint vocabulary 300" in first.stdout
    second = run_nmt("data", *args)
    assert second.returncode == 0 and "cache hit" in second.stdout
    assert not (REPO_ROOT / ".hydra").exists()


def test_user_mistakes_are_one_line_errors(tmp_path: Path):
    args = local_corpus(tmp_path)
    for bad, expected in (
        ([f"data.root={tmp_path / 'missing'}"], "does not exist"),
        (["data.tgt_lang=xx"], "missing corpus file"),
        (["data.spm.vocab_size=100000"], "data.spm.vocab_size=100000 is too large"),
    ):
        result = run_nmt("data", *args, *bad)
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("nmt: error:")]
        assert len(errors) == 1 and expected in errors[0]
        assert "Traceback" not in result.stderr


def test_missing_required_setting_is_one_line(tmp_path: Path):
    result = run_nmt("data", "data=local_files")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "nmt: error: setting data.root is required: add data.root=<value>"
    )


def test_typo_in_override_is_hydra_error():
    result = run_nmt("data", "data.spm.vocab_sise=10")
    assert result.returncode == 1
    assert "Key 'vocab_sise' not in 'SpmConfig'" in result.stderr


def test_usage_and_unknown_command():
    assert "usage: nmt <command>" in run_nmt("--help").stdout
    result = run_nmt("trian")
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr


def composed(*overrides: str):
    """The typed config `nmt` would compose from these overrides (no subprocess)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return to_config(compose("config", overrides=list(overrides)))


def test_typed_decode_keys_are_read_from_the_overrides():
    overrides = ["decode.beam_size=5", "translate.max_tokens=100", "name=x"]
    # typed keys win even when they equal the default: the checkpoint may say beam 3
    assert decode_overrides("translate", overrides, composed(*overrides)) == {"beam_size": 5}
    # a group choice types every key its file sets; a later key overrides the file's value
    overrides = ["decode=greedy", "decode.beam_size=2", "decode.max_len_b=7"]
    assert decode_overrides("evaluate", overrides, composed(*overrides)) == {
        "beam_size": 2, "length_penalty": 0.0, "max_len_b": 7
    }  # fmt: skip
    assert decode_overrides("translate", [], composed()) == {}


def test_settings_the_checkpoint_carries_are_refused():
    for override, expected in (
        ("model=rnn_bahdanau", "the checkpoint carries its model settings"),
        ("model.hidden_size=64", "the checkpoint carries its model settings"),
        ("train.lr=0.1", "the checkpoint carries its training settings"),
        ("data.root=/elsewhere", "(evaluate.data_root=DIR reads its corpus from another folder)"),
        ("experiment=smoke", "its decode settings included"),
    ):
        with pytest.raises(UserError, match=re.escape(f"{override}: ")) as error:
            decode_overrides("evaluate", [override], composed(override))
        assert expected in str(error.value)


def test_refused_override_is_one_line_before_anything_loads():
    result = run_nmt("translate", "translate.ckpt=/nowhere.pt", "experiment=smoke")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "nmt: error: experiment=smoke: the checkpoint carries its experiment's settings, its "
        "decode settings included; drop this override and type decode.* keys to change the search"
    ]


def test_no_command_writes_a_hydra_folder():
    # The trainer writes config.yaml itself; Hydra's .hydra/ copy would only duplicate it.
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.output_subdir is None


def test_a_run_directory_that_cannot_be_created_is_one_line_before_anything_runs(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    done = run_nmt("train", f"hydra.run.dir={tmp_path / 'file' / 'run'}")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"nmt: error: cannot create the run directory {tmp_path}/file/run: {tmp_path}/file is "
        "not a writable directory; choose another hydra.run.dir"
    )


def test_a_training_refused_for_its_settings_leaves_no_run_directory(tmp_path):
    done = run_nmt("train", "train.lr=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "train.lr=0.0 is out of range" in done.stderr
    assert not (tmp_path / "run").exists()


def interrupted_start(tmp_path: Path, raise_statement: str) -> tuple[int, str]:
    """Exit status and stderr of `python -m nmt translate` whose import of `nmt.cli` runs
    `raise_statement`, as SIGINT would raise there. Through `-m`, as `python -m nmt` runs:
    at exit CPython treats a KeyboardInterrupt under `-m` differently from `-c`."""
    (tmp_path / "interrupted_nmt.py").write_text(
        "import runpy, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'nmt.cli':\n"
        f"            {raise_statement}\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['nmt', 'translate']\n"
        "runpy.run_module('nmt', run_name='__main__', alter_sys=True)\n"
    )
    result = subprocess.run([sys.executable, "-m", "interrupted_nmt"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    return result.returncode, result.stderr


def test_ctrl_c_while_python_imports_the_command_line_is_one_line(tmp_path):
    """The earliest moment a Ctrl-C can reach nmt's code: importing `nmt.cli` itself, which
    `python -m nmt` guards."""
    assert interrupted_start(tmp_path, "raise KeyboardInterrupt") == (130, "nmt: interrupted\n")


def test_ctrl_c_that_passed_through_an_exec_of_a_string_still_ends_with_130(tmp_path):
    """dataclasses and namedtuple build methods with `exec(<string>)` while a module imports.
    A KeyboardInterrupt that leaves such an `exec` makes CPython, run with `-m`, kill itself
    with SIGINT at exit (status -2, not 130) even after it was caught, unless the command ends
    without that exit."""
    status = interrupted_start(tmp_path, "exec('raise KeyboardInterrupt')")
    assert status == (130, "nmt: interrupted\n")

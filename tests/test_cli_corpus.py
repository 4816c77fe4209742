"""Your own corpus through the `nmt` command, offline: json and parquet files in `datasets`'
`translation` layout, set on the command line or in a data config file, several training
sources, and a short training run on them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from nmt.config import CONFIG_DIR, to_config
from nmt.errors import UserError
from tests.test_cli import run_nmt
from tests.toy import toy_pairs

SIZES = {"train": 120, "validation": 10, "test": 10}
TINY_TRANSFORMER = [
    "model=transformer_small", "model.hidden_size=32", "model.ffn_size=64", "model.num_heads=2",
    "model.num_encoder_layers=1", "model.num_decoder_layers=1",
]  # fmt: skip


def write_corpus(folder: Path, suffix: str) -> dict[str, Path]:
    """train/validation/test files of the toy corpus as `{"translation": {"de", "en"}}` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for seed, (split, num_pairs) in enumerate(SIZES.items()):
        rows = [{"translation": {"de": s, "en": t}} for s, t in toy_pairs(num_pairs, seed)]
        files[split] = folder / f"{split}.{suffix}"
        if suffix == "jsonl":
            files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
        else:
            pq.write_table(pa.Table.from_pylist(rows), files[split])
    return files


def common(tmp_path: Path) -> list[str]:
    # A palindrome's reversal is itself: a real pair of the toy task, not a copied line.
    return [f"data.cache_dir={tmp_path / 'cache'}", "data.spm.vocab_size=300",
            "data.clean.drop_identical=false"]  # fmt: skip


def test_json_files_from_the_command_line_in_both_forms(tmp_path: Path):
    files = write_corpus(tmp_path / "corpus", "jsonl")
    hub = ["data=wmt14_de_en", "data.hub_path=json", *common(tmp_path)]
    as_dict = ",".join(f"{split}:{path}" for split, path in files.items())
    first = run_nmt("data", *hub, f"data.hub_data_files={{{as_dict}}}")
    assert first.returncode == 0, first.stderr
    assert re.search(r"^train +120 +120 ", first.stdout, re.M), first.stdout
    assert "cache miss" in first.stdout
    dotted = [f"data.hub_data_files.{split}={path}" for split, path in files.items()]
    second = run_nmt("data", *hub, *dotted)
    assert second.returncode == 0 and "cache hit" in second.stdout, second.stderr


def test_parquet_corpus_in_a_config_file_prepares_and_trains(tmp_path: Path):
    files = write_corpus(tmp_path / "corpus", "parquet")
    (tmp_path / "conf/data").mkdir(parents=True)
    (tmp_path / "conf/data/my_corpus.yaml").write_text(
        "defaults: [wmt14_de_en, _self_]\nname: my_corpus\nhub_path: parquet\nhub_data_files:\n"
        + "".join(f"  {split}: {path}\n" for split, path in files.items())
    )
    setup = ["data=my_corpus", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *common(tmp_path)]
    data = run_nmt("data", *setup)
    assert data.returncode == 0, data.stderr
    assert re.search(r"^validation +10 +10 ", data.stdout, re.M), data.stdout
    run_dir = tmp_path / "run"
    train = run_nmt(
        "train", *setup, *TINY_TRANSFORMER, "train.device=cpu", "train.precision=fp32",
        "train.max_steps=3", "train.max_epochs=null", "train.max_tokens=600",
        "train.validate_every=3", "train.max_valid_sentences=2", "train.num_heatmaps=0",
        "decode.beam_size=1", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert (run_dir / "best.pt").is_file()
    assert "cache hit" in (run_dir / "train.log").read_text()


def test_several_training_sources_from_the_command_line(tmp_path: Path):
    json_files = write_corpus(tmp_path / "json", "jsonl")
    parquet_files = write_corpus(tmp_path / "parquet", "parquet")
    hub = ["data=wmt14_de_en", "data.hub_path=json", *common(tmp_path)]
    hub += [f"data.hub_data_files.{split}={json_files[split]}" for split in ("validation", "test")]
    sources = (
        f"[{{name:news,hub_path:json,hub_data_files:{{train:{json_files['train']}}}}},"
        f"{{name:crawl,hub_path:parquet,hub_data_files:{{train:{parquet_files['train']}}},"
        "max_pairs:50}]"
    )
    result = run_nmt("data", *hub, f"data.train_sources={sources}")
    assert result.returncode == 0, result.stderr
    # crawl holds news's first 50 pairs again, and data=wmt14_de_en drops duplicates
    assert re.search(r"^train +170 +120 ", result.stdout, re.M), result.stdout
    assert re.search(r"^  news +120 +120 ", result.stdout, re.M)
    assert re.search(r"^  crawl +50 +0 ", result.stdout, re.M)
    assert "training source 'crawl' adds no pair: 50 duplicates" in result.stderr


def test_training_sources_need_unique_names():
    overrides = ["data.train_sources=[{name:news,root:a},{name:crawl,root:b},{name:news,root:c}]"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        dict_cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(UserError, match=r"^data\.train_sources\[2\]\.name=news must be a unique"):
        to_config(dict_cfg)

"""Load raw sentence pairs into a `datasets.Dataset` with columns `src` and `tgt`.

Three layouts, chosen by `data.format`: `text` (one file per side, optionally gzip), `tsv`
(one file, two columns) and `hub` (a Hugging Face dataset with a `translation` column, from
the hub or from local files through one of `datasets`' builders such as `json`).
Local files are read line by line with `nmt.data.lines.read_lines` rather than by the
`text` builder, so that a line is exactly one `\\n`-terminated record and a bad byte is
reported with its file and line.
"""

from __future__ import annotations

import glob
import itertools
import logging
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path

import datasets
import pyarrow as pa
from datasets.exceptions import DatasetGenerationError

from nmt.config import DataConfig
from nmt.config_checks import LOCAL_BUILDERS
from nmt.data.lines import Replacements, read_lines
from nmt.errors import UserError

log = logging.getLogger(__name__)

FETCH_HINT = "see scripts/fetch_multi30k.sh, or set NMT_DATA_DIR / data.root=<folder>"
DECODE_FIX = "fix the file, or set data.clean.on_decode_error=replace"
GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip file


def data_root(cfg: DataConfig) -> Path:
    """The corpus folder as an absolute path, checked to exist."""
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"data root {root} (data.root={cfg.root}) does not exist: {FETCH_HINT}")
    return root


def split_files(cfg: DataConfig, split: str) -> list[Path]:
    """The files one split is read from (text: source then target; tsv: one file)."""
    root = data_root(cfg)
    if cfg.format not in ("text", "tsv"):
        raise UserError(f"data.format={cfg.format} has no local files (expected text or tsv)")
    try:
        if cfg.format == "text":
            langs = (cfg.src_lang, cfg.tgt_lang)
            names = [cfg.text_pattern.format(split=split, lang=lang) for lang in langs]
        else:
            names = [cfg.tsv_pattern.format(split=split)]
    except (KeyError, IndexError, ValueError):
        placeholders = "{split} and {lang}" if cfg.format == "text" else "only {split}"
        raise UserError(
            f"data.{cfg.format}_pattern is not a file name pattern: use {placeholders}, "
            "e.g. data.text_pattern='{split}.{lang}.gz' or data.tsv_pattern='{split}.tsv'"
        ) from None
    paths = [root / name for name in names]
    for path in paths:
        if not path.is_file():
            raise UserError(
                f"missing corpus file {path} for split '{split}': check data.src_lang/"
                f"data.tgt_lang/data.*_split and data.{cfg.format}_pattern, or {FETCH_HINT}"
            )
        _check_compression(path, f"data.{cfg.format}_pattern")
    return paths


def _check_compression(path: Path, pattern_key: str) -> None:
    """Whether a file is gzip must agree with its name, which decides how it is read: a
    mismatch would otherwise surface as a gzip traceback or as "invalid UTF-8" on line 1."""
    with open(path, "rb") as file:
        head = file.read(len(GZIP_MAGIC))
    if path.suffix == ".gz" and head and head != GZIP_MAGIC:
        raise UserError(
            f"{path} is not gzip-compressed although its name ends in .gz: compress it "
            f"(gzip), or rename it without .gz and set {pattern_key} to match"
        )
    if path.suffix != ".gz" and head == GZIP_MAGIC:
        raise UserError(
            f"{path} is gzip-compressed but its name does not end in .gz: decompress it "
            f"(gunzip), or rename it to end in .gz and set {pattern_key} to match"
        )


def _lines(path: Path, on_decode_error: str, replacements: Replacements) -> Iterator[str]:
    """A corpus file's lines under the data.clean.on_decode_error policy."""
    replace = on_decode_error == "replace"
    return read_lines(path, fix=DECODE_FIX, replacements=replacements if replace else None)


def _warn_replaced(path: Path, replacements: Replacements) -> None:
    if replacements.num_lines:
        log.warning(
            "%s: replaced undecodable bytes on %d lines (the first is line %d)",
            path, replacements.num_lines, replacements.first_line,
        )  # fmt: skip


def _count(num_lines: int) -> str:
    return f"{num_lines} lines" if num_lines else "no lines"


def _text_pairs(
    src_path: Path, tgt_path: Path, on_decode_error: str, empty_hint: str
) -> Iterator[dict]:
    src_replaced, tgt_replaced = Replacements(), Replacements()
    src_lines = _lines(src_path, on_decode_error, src_replaced)
    tgt_lines = _lines(tgt_path, on_decode_error, tgt_replaced)
    num_pairs = 0
    for num_pairs, (src, tgt) in enumerate(zip_longest(src_lines, tgt_lines), start=1):
        if src is None or tgt is None:
            num_src = num_pairs - 1 + (src is not None) + sum(1 for _ in src_lines)
            num_tgt = num_pairs - 1 + (tgt is not None) + sum(1 for _ in tgt_lines)
            raise UserError(
                f"{src_path} has {_count(num_src)} but {tgt_path} has {_count(num_tgt)}: the "
                "files of a pair must be aligned line by line"
            )
        yield {"src": src, "tgt": tgt}
    if num_pairs == 0:
        raise UserError(f"{src_path} and {tgt_path} have no lines: {empty_hint}")
    _warn_replaced(src_path, src_replaced)
    _warn_replaced(tgt_path, tgt_replaced)


def _tsv_pairs(
    path: Path, columns: tuple[int, int], on_decode_error: str, empty_hint: str
) -> Iterator[dict]:
    src_col, tgt_col = columns
    replaced = Replacements()
    line_no = 0
    for line_no, line in enumerate(_lines(path, on_decode_error, replaced), start=1):
        fields = line.split("\t")
        if len(fields) <= max(src_col, tgt_col):
            raise UserError(
                f"{path}:{line_no}: {len(fields)} tab-separated field(s), need column "
                f"{max(src_col, tgt_col)} (data.tsv_columns={list(columns)}): fix the line"
            )
        yield {"src": fields[src_col], "tgt": fields[tgt_col]}
    if line_no == 0:
        raise UserError(f"{path} has no lines: {empty_hint}")
    _warn_replaced(path, replaced)


def file_signature(paths: list[Path]) -> list[tuple[str, int, int]]:
    """Name, size and modification time of each file: what the data cache is keyed on."""
    return [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in paths]


def is_local_builder(cfg: DataConfig) -> bool:
    """Whether `data.format=hub` reads local files through a `datasets` builder (json, ...)."""
    return cfg.format == "hub" and cfg.hub_path in LOCAL_BUILDERS


def hub_folder(cfg: DataConfig) -> Path | None:
    """The folder `data.hub_path` names if it is one on disk (a hub dataset's repository
    downloaded with `huggingface-cli download --local-dir`, say), which `load_dataset` reads."""
    if cfg.format != "hub" or not cfg.hub_path or is_local_builder(cfg):
        return None
    folder = Path(cfg.hub_path).expanduser()
    return folder.resolve() if folder.is_dir() else None


def hub_files(cfg: DataConfig, split: str) -> list[Path]:
    """The local files a `datasets` builder reads one split from (`data.hub_data_files`),
    each checked to exist; a glob pattern stands for the files it matches, in sorted order."""
    entry = (cfg.hub_data_files or {}).get(split)
    if not entry:
        raise UserError(
            f"data.hub_path={cfg.hub_path} reads local files, but data.hub_data_files has none "
            f"for split '{split}': add data.hub_data_files.{split}=<file>"
        )
    paths = []
    for name in [entry] if isinstance(entry, str) else entry:
        pattern = str(Path(name).expanduser().resolve())
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(Path(match).is_file() for match in matches):
            raise UserError(
                f"missing data file {pattern} (data.hub_data_files.{split}): check the path, "
                "which is relative to the folder nmt runs in"
            )
        paths += [Path(match) for match in matches]
    return paths


def split_signature(cfg: DataConfig, split: str) -> object:
    """What identifies one split's raw pairs for the data cache: local files by name, size and
    mtime (an edited file changes them), a hub dataset by its path, name and revision."""
    if cfg.format in ("text", "tsv"):
        return file_signature(split_files(cfg, split))
    if is_local_builder(cfg):
        return [cfg.hub_path, file_signature(hub_files(cfg, split))]
    folder = hub_folder(cfg)
    if folder is not None:  # every file in it, as `datasets` skips hidden ones (.cache/, .git/)
        files = [f for f in sorted(folder.rglob("*")) if f.is_file()]
        files = [
            f for f in files if not any(p.startswith(".") for p in f.relative_to(folder).parts)
        ]
        signature = [(str(f.relative_to(folder)), *file_signature([f])[0][1:]) for f in files]
        return [cfg.hub_name, cfg.hub_data_files or None, signature]
    return [cfg.hub_path, cfg.hub_name, cfg.hub_revision, cfg.hub_data_files or None]


def load_split(cfg: DataConfig, split: str, cache_dir: Path) -> datasets.Dataset:
    """All raw pairs of one split as a Dataset with string columns `src` and `tgt`."""
    datasets.disable_progress_bars()  # our commands print their own summaries
    if cfg.format == "hub":
        return _load_hub_split(cfg, split, cache_dir)
    paths = split_files(cfg, split)
    if cfg.format == "text":
        generator, kwargs = _text_pairs, {"src_path": paths[0], "tgt_path": paths[1]}
    else:
        generator = _tsv_pairs
        kwargs = {"path": paths[0], "columns": tuple(cfg.tsv_columns)}
    kwargs["on_decode_error"] = cfg.clean.on_decode_error
    # An empty file is refused by the reader, with the setting that chose the split.
    kwargs["empty_hint"] = _empty_hint(cfg, split)
    return _write_arrow(generator(**kwargs), cache_dir / f"{split}.pairs.arrow")


def _write_arrow(pairs: Iterator[dict], path: Path) -> datasets.Dataset:
    """Pairs written to an Arrow file 10,000 at a time and memory-mapped back as a Dataset.

    `Dataset.from_generator` encodes every row through `datasets`' feature machinery, which
    took most of the time preparing a 1M-pair corpus; Arrow builds a record batch per chunk.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("src", pa.string()), ("tgt", pa.string())])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        while chunk := list(itertools.islice(pairs, 10_000)):
            writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema=schema))
    return datasets.Dataset.from_file(str(path))


def _empty_hint(cfg: DataConfig, split: str) -> str:
    """The fix for a split with no sentence pairs, naming the setting that chose the split."""
    if split == cfg.train_split:
        key = "data.train_split"
    elif split == cfg.valid_split:
        key = "data.valid_split"
    else:
        key = "data.test_splits"
    return f"split '{split}' ({key}) needs at least one sentence pair: fill it, or change {key}"


def _load_hub_split(cfg: DataConfig, split: str, cache_dir: Path) -> datasets.Dataset:
    """A split of a `load_dataset` corpus whose `translation` column maps language to text
    (or, as a CSV file can hold, with one column per language).

    Local files are read into `cache_dir` (the build's own folder, deleted with it); a hub
    dataset stays in the Hugging Face cache, where it was downloaded once.
    """
    dataset, where = _read_hub(cfg, split, cache_dir)
    if len(dataset) == 0:
        raise UserError(f"{where} has no rows: {_empty_hint(cfg, split)}")
    langs = [cfg.src_lang, cfg.tgt_lang]
    if "translation" in dataset.column_names:
        available = set(dataset[0]["translation"])
    elif set(langs) <= set(dataset.column_names):
        available = set(dataset.column_names)
    else:
        raise UserError(
            f"{where} has columns {dataset.column_names}, neither 'translation' nor "
            f'{langs}: write the pairs as {{"translation": {{lang: text}}}} or export them to '
            "files and use data=local_files"
        )
    missing = set(langs) - available
    if missing:
        raise UserError(
            f"{where} has no language {sorted(missing)}: set data.src_lang/data.tgt_lang to "
            f"some of {sorted(available)}"
        )
    src_lang, tgt_lang = langs

    def to_pairs(batch: dict) -> dict:
        """Text columns; a null (an empty cell, a missing language) is an empty side, which
        cleaning drops from training and keeps, empty, in an evaluation split."""
        if "translation" in batch:
            rows = [pair or {} for pair in batch["translation"]]
            columns = {lang: [row.get(lang) for row in rows] for lang in langs}
        else:
            columns = {lang: batch[lang] for lang in langs}
        text = {
            lang: ["" if v is None else str(v) for v in values] for lang, values in columns.items()
        }
        return {"src": text[src_lang], "tgt": text[tgt_lang]}

    # The pairs go to `cache_dir` rather than next to a hub dataset's files, so a build leaves
    # no second copy of a large corpus in the Hugging Face cache; one file per source and split.
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = datasets.fingerprint.Hasher.hash([where, split, cfg.hub_revision, langs])
    return dataset.map(
        to_pairs,
        batched=True,
        remove_columns=dataset.column_names,
        cache_file_name=str(cache_dir / f"pairs-{key}.arrow"),
    )


def _read_hub(cfg: DataConfig, split: str, cache_dir: Path) -> tuple[datasets.Dataset, str]:
    """`load_dataset` of one split as it comes, and how to name where it came from."""
    if not cfg.hub_path:
        raise UserError("data.format=hub needs data.hub_path (e.g. wmt14)")
    local = is_local_builder(cfg)
    if local:
        files = hub_files(cfg, split)
        where = f"{', '.join(map(str, files))} (data.hub_path={cfg.hub_path})"
        arguments = {"data_files": {split: list(map(str, files))}, "cache_dir": str(cache_dir)}
        if cfg.hub_path == "csv":  # pandas would read a cell "None" or "NA" as a null
            arguments["na_filter"] = False
    else:
        where = f"hub dataset {cfg.hub_path}/{cfg.hub_name}"
        arguments = {"data_files": cfg.hub_data_files or None}
        if hub_folder(cfg) is not None:  # local: its Arrow files go with the build, as above
            where = f"dataset folder {hub_folder(cfg)}"
            arguments["cache_dir"] = str(cache_dir)
    verbosity = datasets.logging.get_verbosity()
    # A builder logs its parse error before raising it: the user gets it once, as our one line.
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        dataset = datasets.load_dataset(
            cfg.hub_path, cfg.hub_name, split=split, revision=cfg.hub_revision, **arguments
        )
    except (ConnectionError, FileNotFoundError, ValueError, DatasetGenerationError) as error:
        # A builder's own parse error (bad JSON, bad bytes) is the cause of its wrapper's.
        cause = error.__cause__ if isinstance(error, DatasetGenerationError) else error
        message = str(cause).strip()
        first_line = message.splitlines()[0] if message else repr(cause)
        if local:
            fix = "check the file"
        elif "Offline" in message:  # OfflineModeIsEnabled: HF_HUB_OFFLINE=1 and not cached
            fix = (
                "the Hugging Face hub is offline and the dataset is not in its cache: run "
                "`nmt data` once on a connected machine and copy ~/.cache/huggingface here"
            )
        else:
            fix = (
                "check data.hub_path/hub_name/*_split, the network, or use data=local_files "
                "with exported files"
            )
        raise UserError(
            f"could not load split '{split}' of {where} ({first_line}): {fix}"
        ) from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    return dataset, where

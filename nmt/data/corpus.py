"""Load raw sentence pairs into a `datasets.Dataset` with columns `src` and `tgt`.

Three layouts, chosen by `data.format`: `text` (one file per side, optionally gzip), `tsv`
(one file, two columns) and `hub` (a Hugging Face dataset with a `translation` column).
Local files are read line by line here rather than by the `text` builder, so that a line
is exactly one `\\n`-terminated record (`str.splitlines` would also split on U+2028 and
friends and break alignment) and so that a bad byte is reported with its file and line.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

from nmt.config import DataConfig
from nmt.errors import UserError

log = logging.getLogger(__name__)

FETCH_HINT = "see scripts/fetch_multi30k.sh, or set NMT_DATA_DIR / data.root=<folder>"


def data_root(cfg: DataConfig) -> Path:
    """The corpus folder as an absolute path, checked to exist."""
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"data root {root} (data.root={cfg.root}) does not exist: {FETCH_HINT}")
    return root


def split_files(cfg: DataConfig, split: str) -> list[Path]:
    """The files one split is read from (text: source then target; tsv: one file)."""
    root = data_root(cfg)
    if cfg.format == "text":
        names = [
            cfg.text_pattern.format(split=split, lang=lang) for lang in (cfg.src_lang, cfg.tgt_lang)
        ]
    elif cfg.format == "tsv":
        names = [cfg.tsv_pattern.format(split=split)]
    else:
        raise UserError(f"data.format={cfg.format} has no local files (expected text or tsv)")
    paths = [root / name for name in names]
    for path in paths:
        if not path.is_file():
            raise UserError(
                f"missing corpus file {path} for split '{split}': check data.src_lang/"
                f"data.tgt_lang/data.*_split and data.{cfg.format}_pattern, or {FETCH_HINT}"
            )
    return paths


def read_lines(path: Path, on_decode_error: str) -> Iterator[str]:
    """Yield the lines of a UTF-8 file (gzip if it ends in .gz), without their newline.

    Undecodable bytes raise a `UserError` naming file and line, or with
    `on_decode_error="replace"` become U+FFFD and are counted in one warning.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    num_replaced = 0
    with opener(path, "rb") as file:
        for line_no, raw in enumerate(file, start=1):
            raw = raw.rstrip(b"\r\n")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                if on_decode_error != "replace":
                    raise UserError(
                        f"{path}:{line_no}: invalid UTF-8 byte 0x{raw[error.start]:02x} at "
                        f"column {error.start + 1}: fix the file, or set "
                        "data.clean.on_decode_error=replace"
                    ) from None
                num_replaced += 1
                yield raw.decode("utf-8", errors="replace")
    if num_replaced:
        log.warning("%s: replaced undecodable bytes on %d lines", path, num_replaced)


def _text_pairs(src_path: Path, tgt_path: Path, on_decode_error: str) -> Iterator[dict]:
    src_lines = read_lines(src_path, on_decode_error)
    tgt_lines = read_lines(tgt_path, on_decode_error)
    for num_pairs, (src, tgt) in enumerate(zip_longest(src_lines, tgt_lines)):
        if src is None or tgt is None:
            num_src = num_pairs + (src is not None) + sum(1 for _ in src_lines)
            num_tgt = num_pairs + (tgt is not None) + sum(1 for _ in tgt_lines)
            raise UserError(
                f"{src_path} has {num_src} lines but {tgt_path} has {num_tgt}: the files of a "
                "pair must be aligned line by line"
            )
        yield {"src": src, "tgt": tgt}


def _tsv_pairs(path: Path, columns: tuple[int, int], on_decode_error: str) -> Iterator[dict]:
    src_col, tgt_col = columns
    for line_no, line in enumerate(read_lines(path, on_decode_error), start=1):
        fields = line.split("\t")
        if len(fields) <= max(src_col, tgt_col):
            raise UserError(
                f"{path}:{line_no}: {len(fields)} tab-separated field(s), need column "
                f"{max(src_col, tgt_col)} (data.tsv_columns={list(columns)}): fix the line"
            )
        yield {"src": fields[src_col], "tgt": fields[tgt_col]}


def file_signature(paths: list[Path]) -> list[tuple[str, int, int]]:
    """Name, size and modification time of each file: what the data cache is keyed on."""
    return [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in paths]


def load_split(cfg: DataConfig, split: str, cache_dir: Path) -> datasets.Dataset:
    """All raw pairs of one split as a Dataset with string columns `src` and `tgt`."""
    datasets.disable_progress_bars()  # our commands print their own summaries
    if cfg.format == "hub":
        return _load_hub_split(cfg, split)
    paths = split_files(cfg, split)
    if cfg.format == "text":
        generator, kwargs = _text_pairs, {"src_path": paths[0], "tgt_path": paths[1]}
    else:
        generator = _tsv_pairs
        # A tuple: `from_generator` would treat a list argument as shards to split.
        kwargs = {"path": paths[0], "columns": tuple(cfg.tsv_columns)}
    kwargs["on_decode_error"] = cfg.clean.on_decode_error
    features = datasets.Features({"src": datasets.Value("string"), "tgt": datasets.Value("string")})
    # The fingerprint keys the HF cache on the files' size and mtime, so an edited file is
    # re-read even though the generator and its arguments are unchanged.
    fingerprint = datasets.fingerprint.Hasher.hash([split, file_signature(paths), kwargs])
    try:
        return datasets.Dataset.from_generator(
            generator,
            features=features,
            gen_kwargs=kwargs,
            cache_dir=str(cache_dir),
            fingerprint=fingerprint,
        )
    except DatasetGenerationError as error:
        # Our own readers raise UserError; `datasets` wraps whatever a generator raises.
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise


def _load_hub_split(cfg: DataConfig, split: str) -> datasets.Dataset:
    """A split of a `load_dataset` corpus whose `translation` column maps language to text."""
    if not cfg.hub_path:
        raise UserError("data.format=hub needs data.hub_path (e.g. wmt14)")
    try:
        dataset = datasets.load_dataset(
            cfg.hub_path,
            cfg.hub_name,
            split=split,
            revision=cfg.hub_revision,
            data_files=cfg.hub_data_files,
        )
    except (ConnectionError, FileNotFoundError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UserError(
            f"could not load split '{split}' of hub dataset {cfg.hub_path}/{cfg.hub_name} "
            f"({first_line}): check data.hub_path/hub_name/*_split, the network, or use "
            "data=local_files with exported files"
        ) from None
    if "translation" not in dataset.column_names:
        raise UserError(
            f"hub dataset {cfg.hub_path} has columns {dataset.column_names}, not 'translation': "
            "export it to files and use data=local_files"
        )
    missing = (
        {cfg.src_lang, cfg.tgt_lang} - set(dataset[0]["translation"]) if len(dataset) else set()
    )
    if missing:
        raise UserError(
            f"hub dataset {cfg.hub_path}/{cfg.hub_name} has no language {sorted(missing)}: "
            f"set data.src_lang/data.tgt_lang to some of {sorted(dataset[0]['translation'])}"
        )
    src_lang, tgt_lang = cfg.src_lang, cfg.tgt_lang

    def to_pairs(batch: dict) -> dict:
        pairs = batch["translation"]
        return {"src": [p[src_lang] for p in pairs], "tgt": [p[tgt_lang] for p in pairs]}

    return dataset.map(to_pairs, batched=True, remove_columns=dataset.column_names)

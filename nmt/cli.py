"""The `nmt` command: `nmt <data|train|translate|evaluate|score|export> [Hydra overrides]`.

Thin entry points over the library: compose the config with Hydra, turn it into typed
dataclasses, call one library function, and print a user mistake (`UserError`, a missing or
ill-typed setting) as one line on stderr with exit status 2 instead of a traceback.

Only the standard library is imported at the top. Hydra, PyTorch and the commands are
imported inside `main()`, under its guard: Ctrl-C at any moment, start-up included, ends with
one line and status 130, and a closed stdout (`nmt translate ... | head -1`) ends quietly.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nmt.errors import Interrupted, UserError, exit_interrupted

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from nmt.config import Config

log = logging.getLogger("nmt")

USAGE = """usage: nmt <command> [key=value ...]

commands:
  data       prepare the configured corpus: clean, train SentencePiece, cache encoded Arrow
  train      train a model (prepares the data first if needed); one run directory per run
  translate  translate a file or stdin with a trained checkpoint
  evaluate   translate the test sets and score them with sacreBLEU
  score      force-decode source/target pairs: log-probability, average, tokens per pair
  export     write a Transformer checkpoint as a CTranslate2 model folder (export.output)

Overrides are Hydra's: `nmt train model=rnn_bahdanau train.max_epochs=5`.
`nmt <command> --help` lists the config groups and the composed config."""

# Commands that write no run directory: Hydra logs to stderr only.
NO_RUN_DIR = ["hydra.run.dir=.", "hydra/job_logging=console"]
# What a checkpoint carries and translate/evaluate therefore refuse to take from the command line.
CARRIED = {"model": "model", "data": "data", "train": "training"}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as shells report `yes | head -1`'s writer


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user mistake as `nmt: error: ...` on stderr and exit with status 2."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        yield
    except Interrupted as error:
        exit_interrupted(str(error))
    except UserError as error:
        print(f"nmt: error: {error}", file=sys.stderr)
        sys.exit(2)
    except MissingMandatoryValue as error:
        key = error.full_key
        print(f"nmt: error: setting {key} is required: add {key}=<value>", file=sys.stderr)
        sys.exit(2)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = (getattr(error, "msg", None) or str(error)).strip().splitlines()[0]
        where = f"setting {key}: " if key else ""
        print(f"nmt: error: {where}{message}", file=sys.stderr)
        sys.exit(2)


def typed(dict_cfg: DictConfig) -> Config:
    """The typed config; a local corpus also switches the Hugging Face hub offline.

    Offline mode is read when `datasets` is first imported, so commands import it after this.
    A corpus is local unless it, or one of its training sources, names a hub dataset
    (`datasets`' json/csv/parquet/arrow builders and a dataset folder on disk are local).
    """
    from nmt.config import to_config

    with user_errors():
        cfg = to_config(dict_cfg)
    formats = [(cfg.data.format, cfg.data.hub_path)]
    formats += [(s.format or cfg.data.format, s.hub_path) for s in cfg.data.train_sources]
    if all(form != "hub" or _is_local(path) for form, path in formats):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return cfg


def _is_local(hub_path: str | None) -> bool:
    """Whether `data.hub_path` reads from disk: a local builder's files or a dataset folder."""
    from nmt.config_checks import LOCAL_BUILDERS

    return hub_path is not None and (hub_path in LOCAL_BUILDERS or Path(hub_path).is_dir())


def decode_overrides(command: str, overrides: list[str], cfg: Config) -> dict[str, Any]:
    """The decode settings typed on the command line (key -> composed value), for translate
    and evaluate to apply over the checkpoint's own; a group choice such as `decode=greedy`
    counts as typing every key its file sets.

    Typed keys are read from the overrides themselves, not found by comparing values with the
    defaults: `decode.beam_size=5` typed on purpose must win over a checkpoint's beam 3. The
    model, data and training settings and the experiment are the checkpoint's: overriding them
    here could only mislead, so it is refused.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from nmt.config import CONFIG_DIR

    typed_keys: set[str] = set()
    for override in OverridesParser.create().parse_overrides(overrides=overrides):
        key = override.key_or_group
        section = key.split(".")[0]
        if section in CARRIED:
            hint = ""
            if section == "data" and command == "evaluate":
                hint = " (evaluate.data_root=DIR reads its corpus from another folder)"
            raise UserError(f"{override.input_line}: the checkpoint carries its "
                            f"{CARRIED[section]} settings; drop this override{hint}")  # fmt: skip
        if section == "experiment":
            raise UserError(f"{override.input_line}: the checkpoint carries its experiment's "
                            "settings, its decode settings included; drop this override "
                            "and type decode.* keys to change the search")  # fmt: skip
        if key == "decode":
            group_file = CONFIG_DIR / "decode" / f"{override.value()}.yaml"
            typed_keys.update(str(k) for k in OmegaConf.load(group_file))
        elif section == "decode":
            typed_keys.add(key.split(".", 1)[1])
    return {key: getattr(cfg.decode, key) for key in sorted(typed_keys)}


def data_command(dict_cfg: DictConfig) -> None:
    """Prepare the data and print what happened (a second run is a cache hit)."""
    cfg = typed(dict_cfg)
    from nmt.data import format_stats, prepare

    with user_errors():
        print(format_stats(prepare(cfg.data)))


def train_command(dict_cfg: DictConfig) -> None:
    """Train in Hydra's run directory (preparing data first); the trainer records the config."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = typed(dict_cfg)
    except SystemExit:  # a mistake in the settings: leave no empty run directory behind
        _remove_if_unused(run_dir)
        raise
    from nmt.train import train

    if int(os.environ.get("RANK", "0")) > 0:
        _log_errors_only()
    with user_errors():
        train(cfg, run_dir)


def _log_errors_only() -> None:
    """Under torchrun, rank 0 alone logs (the other ranks' news is the same or rank 0's to
    tell); errors still show, and train.log is rank 0's."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.ERROR)


def _remove_if_unused(run_dir: Path) -> None:
    """Remove the directory Hydra made for a run that never started (it holds only an empty
    log); a directory with anything else in it is left alone."""
    files = list(run_dir.iterdir()) if run_dir.is_dir() else []
    if all(f.name == "train.log" and f.stat().st_size == 0 for f in files):
        for file in files:
            file.unlink()
        run_dir.rmdir()


def translate_command(dict_cfg: DictConfig) -> None:
    """Translate `translate.input` (or stdin) into `translate.output` (or stdout)."""
    cfg, overrides = _inference_config(dict_cfg, "translate")
    from nmt.translate import translate_file

    with user_errors():
        translate_file(cfg.translate, decode_overrides=overrides)


def evaluate_command(dict_cfg: DictConfig) -> None:
    """Score a checkpoint on its test sets, or a hypothesis file against a reference file."""
    cfg, overrides = _inference_config(dict_cfg, "evaluate")
    from nmt.translate import evaluate_checkpoint, format_scores, score_files

    settings = cfg.evaluate
    with user_errors():
        if settings.hypotheses or settings.references:
            if not (settings.hypotheses and settings.references):
                raise UserError("give both evaluate.hypotheses and evaluate.references")
            row = score_files(Path(settings.hypotheses), Path(settings.references))
            print(format_scores([row]))
            return
        record = evaluate_checkpoint(cfg.translate, settings, decode_overrides=overrides)
        print(format_scores(record["results"]))
        print(f"wrote {record['path']}")


def score_command(dict_cfg: DictConfig) -> None:
    """Write the forced score of each `score.source`/`score.target` (or `score.tsv`) pair."""
    cfg, overrides = _inference_config(dict_cfg, "score")
    from nmt.score import score_pairs

    with user_errors():
        score_pairs(cfg.translate, cfg.score, decode_overrides=overrides)


def export_command(dict_cfg: DictConfig) -> None:
    """Write `translate.ckpt` as a CTranslate2 folder `export.output`, with its search settings
    (and any decode.* typed here) for `translate.engine=ctranslate2` to start from."""
    cfg, overrides = _inference_config(dict_cfg, "export")
    from nmt.ct2_export import export_checkpoint

    with user_errors():
        if cfg.translate.ckpt is None or cfg.export.output is None:
            raise UserError("nmt export needs translate.ckpt=<checkpoint> export.output=<folder>")
        folder = export_checkpoint(cfg.translate.ckpt, cfg.export.output,
                                   quantization=cfg.export.quantization,
                                   decode_overrides=overrides)  # fmt: skip
        print(f"wrote {folder}")


def _inference_config(dict_cfg: DictConfig, command: str) -> tuple[Config, dict[str, Any]]:
    """The typed config and the typed decode overrides; refused overrides end here, before
    the heavy imports of the command."""
    from hydra.core.hydra_config import HydraConfig

    cfg = typed(dict_cfg)
    with user_errors():
        return cfg, decode_overrides(command, list(HydraConfig.get().overrides.task), cfg)


COMMANDS: dict[str, tuple[Callable[[DictConfig], None], list[str]]] = {
    "data": (data_command, NO_RUN_DIR),
    "train": (train_command, []),
    "translate": (translate_command, NO_RUN_DIR),
    "evaluate": (evaluate_command, NO_RUN_DIR),
    "score": (score_command, NO_RUN_DIR),
    "export": (export_command, NO_RUN_DIR),
}


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a command; Hydra parses the rest of the command line as overrides."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    name, overrides = args[0], args[1:]
    if name not in COMMANDS:
        print(f"nmt: error: unknown command '{name}'\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    command, fixed_overrides = COMMANDS[name]
    if name == "train":
        with user_errors():
            check_run_dir(overrides)
    sys.argv = [f"nmt {name}", *fixed_overrides, *overrides]
    with quiet_exits():  # Ctrl-C while importing Hydra or composing the config
        import hydra

        from nmt.config import CONFIG_DIR

        # An absolute path: Hydra would read "../configs" as a module.
        compose = hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="config")
        compose(_guarded(command))()


def check_run_dir(overrides: list[str]) -> None:
    """Hydra creates the run directory before any nmt code runs, and reports a failure with a
    traceback: check first that it can be created (`hydra.run.dir`, default under runs/)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    target = Path(given[-1] if given else "runs")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(
            f"cannot create the run directory {target}: {existing} is not a writable "
            "directory; choose another hydra.run.dir"
        )


def _guarded(command: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """`command` under `quiet_exits` inside Hydra, which would report a BrokenPipeError
    itself (it catches every Exception a task raises; Ctrl-C and exits pass through)."""

    @functools.wraps(command)
    def run(dict_cfg: DictConfig) -> None:
        with quiet_exits():
            command(dict_cfg)

    return run


@contextmanager
def quiet_exits() -> Iterator[None]:
    """End on Ctrl-C or on a closed stdout with one line on stderr instead of a traceback.

    Commands clean up on the way out (`finally`: temporary files are removed). Once stdout
    is closed, Python would fail again flushing it at exit ("Exception ignored ...
    BrokenPipeError"), so it is pointed at /dev/null first.
    """
    try:
        yield
    except KeyboardInterrupt:
        exit_interrupted()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        print("nmt: stdout was closed; stopped", file=sys.stderr)
        sys.exit(EXIT_BROKEN_PIPE)

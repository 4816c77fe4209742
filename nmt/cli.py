"""The `nmt` command: `nmt <data|train|translate|evaluate> [Hydra overrides]`.

Thin entry points over the library: compose the config with Hydra, turn it into typed
dataclasses, call one library function, and print a user mistake (`UserError`, a missing or
ill-typed setting) as one line on stderr with exit status 2 instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from nmt.config import CONFIG_DIR, Config, to_config
from nmt.errors import UserError

log = logging.getLogger("nmt")

USAGE = """usage: nmt <command> [key=value ...]

commands:
  data       prepare the configured corpus: clean, train SentencePiece, cache encoded Arrow
  train      train a model (prepares the data first if needed); one run directory per run
  translate  translate a file or stdin with a trained checkpoint
  evaluate   translate the test sets and score them with sacreBLEU

Overrides are Hydra's: `nmt train model=rnn_bahdanau train.max_epochs=5`.
`nmt <command> --help` lists the config groups and the composed config."""

# An absolute path: Hydra would read "../configs" as a module.
CONFIG_PATH = str(CONFIG_DIR)
# Commands that write no run directory: Hydra logs to stderr only and saves nothing.
NO_RUN_DIR = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=console"]


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user mistake as `nmt: error: ...` on stderr and exit with status 2."""
    try:
        yield
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
    """
    with user_errors():
        cfg = to_config(dict_cfg)
    if cfg.data.format != "hub":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return cfg


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def data_command(dict_cfg: DictConfig) -> None:
    """Prepare the data and print what happened (a second run is a cache hit)."""
    from nmt.data import format_stats, prepare

    cfg = typed(dict_cfg)
    with user_errors():
        print(format_stats(prepare(cfg.data)))


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def train_command(dict_cfg: DictConfig) -> None:
    """Save the resolved config in the run directory, then train (preparing data first)."""
    from nmt.train import train

    cfg = typed(dict_cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dict_cfg, resolve=True))
    with user_errors():
        train(cfg, run_dir)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def translate_command(dict_cfg: DictConfig) -> None:
    """Translate `translate.input` (or stdin) into `translate.output` (or stdout)."""
    from nmt.translate import translate_file

    cfg = typed(dict_cfg)
    with user_errors():
        translate_file(cfg)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def evaluate_command(dict_cfg: DictConfig) -> None:
    """Score a checkpoint on its test sets, or a hypothesis file against a reference file."""
    from nmt.evaluate import evaluate_checkpoint, format_scores, score_files

    cfg = typed(dict_cfg)
    settings = cfg.translate
    with user_errors():
        if settings.hypotheses or settings.references:
            if not (settings.hypotheses and settings.references):
                raise UserError("give both translate.hypotheses and translate.references")
            print(
                format_scores([score_files(Path(settings.hypotheses), Path(settings.references))])
            )
            return
        record = evaluate_checkpoint(cfg)
        print(format_scores(record["results"]))
        print(f"wrote {record['path']}")


COMMANDS: dict[str, tuple[Callable[[], None], list[str]]] = {
    "data": (data_command, NO_RUN_DIR),
    "train": (train_command, []),
    "translate": (translate_command, NO_RUN_DIR),
    "evaluate": (evaluate_command, NO_RUN_DIR),
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
    sys.argv = [f"nmt {name}", *fixed_overrides, *overrides]
    command()

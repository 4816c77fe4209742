"""Average the parameters of a run's last N checkpoints into one file (for translation).

python scripts/average_checkpoints.py RUN_DIR [--last 5] [--output RUN_DIR/average_last5.pt]

The default name is not `averaged.pt`: that name is the run's model once a validated average
beat best.pt (`train.average_last`), and an average made by hand has not been validated.
Translate with it by naming the file: `make translate CKPT=RUN_DIR/average_last5.pt ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nmt.checkpoint import average_checkpoints, save_checkpoint, step_checkpoints
from nmt.errors import UserError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--last", type=int, default=5, help="how many step checkpoints")
    parser.add_argument("--output", type=Path, help="default: RUN_DIR/average_last<N>.pt")
    args = parser.parse_args()
    try:
        if args.last < 1:
            raise UserError(f"--last {args.last}: average at least 1 checkpoint")
        paths = step_checkpoints(args.run_dir)[-args.last :]
        if not paths:
            raise UserError(f"{args.run_dir} holds no step_<N>.pt checkpoints")
        output = args.output or args.run_dir / f"average_last{args.last}.pt"
        save_checkpoint(average_checkpoints(paths), output)
    except UserError as error:
        sys.exit(f"average_checkpoints: error: {error}")
    print(f"averaged {len(paths)} checkpoints ({paths[0].name} .. {paths[-1].name}) into {output}")


if __name__ == "__main__":
    main()

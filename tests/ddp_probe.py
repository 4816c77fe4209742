"""`nmt train` with a fault planted on one rank, for the torchrun tests in tests/test_train.py.

NMT_PROBE_NAN=<rank>:<step> makes that rank's loss NaN once, on the step after <step> steps;
NMT_PROBE_LR_LOG=<prefix> appends each step's learning rate to <prefix>.<rank>.
"""

from __future__ import annotations

import os

from nmt import train as train_module
from nmt.cli import main

RANK = int(os.environ["RANK"])
NAN_AT = os.environ.get("NMT_PROBE_NAN")
LR_LOG = os.environ.get("NMT_PROBE_LR_LOG")
forward_backward, train_step = train_module._forward_backward, train_module.train_step
planted = []


def nan_once(run, batch, num_tokens):
    total = forward_backward(run, batch, num_tokens)
    rank, step = map(int, NAN_AT.split(":"))
    if rank == RANK and run.progress.step == step and not planted:
        planted.append(step)
        return total * float("nan")
    return total


def logged_step(run, group):
    stepped = train_step(run, group)
    with open(f"{LR_LOG}.{RANK}", "a") as log:
        log.write(f"{run.progress.step} {run.optimizer.param_groups[0]['lr']!r}\n")
    return stepped


if NAN_AT:
    train_module._forward_backward = nan_once
if LR_LOG:
    train_module.train_step = logged_step
main()

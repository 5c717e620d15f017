"""What the argument lists of the two ops (sgd_op.py, adamw_op.py) build alike: the iteration
counter, the mode's number and the trailing flags in the op's order. Imports no pytest: the
GPU machine may lack it."""

from __future__ import annotations

from typing import Dict, Union

import torch

from clr_ext.schedule import MODES


def scheduled_inputs(iteration: Union[int, torch.Tensor], mode: Union[str, int], device, defaults: Dict, flags: Dict):
    """(counter, mode number, flag values). ``iteration``: the counter tensor itself (the
    caller advances it), or its value (a new int64 counter on ``device``); ``flags``:
    ``defaults``' keys, by name (an unknown one raises, so that a typo can't pass unseen)."""
    unknown = set(flags) - set(defaults)
    if unknown:
        raise TypeError("op_args: unknown arguments %s" % sorted(unknown))
    if not isinstance(iteration, torch.Tensor):
        iteration = torch.tensor(iteration, dtype=torch.int64, device=device)
    mode_number = MODES[mode] if isinstance(mode, str) else mode
    return iteration, mode_number, list({**defaults, **flags}.values())

"""What a scheduled optimizer checks before it loads a state dict, and how a refused load
leaves it as it was (docs/api.md, "Failing steps and refused loads").

``torch.optim.Optimizer.load_state_dict`` replaces the param groups and the state first and
lets the optimizer look at them afterwards; a value the constructor would refuse (a NaN
bound, betas outside [0, 1), an iteration that is no integer) would then be found in the
middle of the load, or never, and step into the params. Everything the constructor checks is
therefore checked here first, on copies, and the load itself runs under a snapshot.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Dict, Iterator, List

import torch

from .._checks import as_float

# Per-param state tensors that must have their param's shape (torch casts their dtype and
# device to the param's, but never their shape).
_SHAPED_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _refuse(where: str, message: str) -> ValueError:
    return ValueError(f"load_state_dict: {where}: {message}")


def check_iteration(where: str, value: Any) -> int:
    """The schedule position: a non-negative integer (an integral one-element tensor is read)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise _refuse(where, f"iteration: must be a non-negative integer, got {value!r}")
    return int(value)


def _saved_groups(state_dict: Any) -> List[Dict[str, Any]]:
    if not isinstance(state_dict, dict):
        raise ValueError(f"load_state_dict: state_dict: must be a dict, got {type(state_dict).__name__}")
    groups = state_dict.get("param_groups")
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("load_state_dict: state_dict['param_groups']: must be a list of dicts")
    if not isinstance(state_dict.get("state", {}), dict):
        raise ValueError("load_state_dict: state_dict['state']: must be a dict")
    return list(groups)


def _saved_state_of_params(optimizer: Any, groups: List[Dict[str, Any]], state: Dict[Any, Any]) -> Iterator[Any]:
    """``(where, param, saved entry)`` for every param whose saved state exists, mapped as
    torch maps them: the i-th saved id to the i-th param of the same group."""
    for index, (saved, current) in enumerate(zip(groups, optimizer.param_groups)):
        for position, (key, param) in enumerate(zip(saved.get("params", []), current["params"])):
            if key in state:
                yield f"param group {index}, param {position}", param, state[key]


def _check_param_state(where: str, param: torch.Tensor, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise _refuse(where, f"state: must be a dict, got {type(entry).__name__}")
    for key in _SHAPED_STATE:
        value = entry.get(key)
        if value is None:
            continue  # torch.optim.SGD saves momentum_buffer=None for a momentum-free param
        if not isinstance(value, torch.Tensor):
            raise _refuse(where, f"state[{key!r}]: must be a tensor, got {type(value).__name__}")
        if value.shape != param.shape:
            raise _refuse(
                where, f"state[{key!r}]: has shape {tuple(value.shape)}, but its param has {tuple(param.shape)}"
            )
    if "step" in entry:
        step = entry["step"]
        if isinstance(step, torch.Tensor):
            if step.numel() != 1:
                raise _refuse(where, f"state['step']: must hold one number, got shape {tuple(step.shape)}")
            step = step.item()
        try:
            value = as_float("step", step)
        except ValueError as error:
            raise _refuse(where, f"state['step']: {error}") from None
        if value < 0:
            raise _refuse(where, f"state['step']: must be >= 0, got {step!r}")


def check_loadable(optimizer: Any, state_dict: Any, schedule: Any) -> None:
    """Raises ``ValueError`` naming the group and the key for any value of ``state_dict``
    that the optimizer's constructor would refuse, before anything is changed.

    Each saved group is checked as the load will leave it: the optimizer's own group keys
    (which a ``torch.optim.SGD`` state dict lacks) under the saved ones, by the same checks
    as a group given to the constructor, against ``schedule`` (the saved one, when the
    state dict carries one). Counts of groups and params are left to torch's own check."""
    groups = _saved_groups(state_dict)
    if len(groups) != len(optimizer.param_groups):
        return  # torch refuses it, with its own words, before it changes anything
    for index, (saved, current) in enumerate(zip(groups, optimizer.param_groups)):
        merged = {key: value for key, value in current.items() if key != "params"}
        merged.update((key, copy.copy(value)) for key, value in saved.items() if key != "params")
        try:
            optimizer._check_group(merged, index, schedule)
        except ValueError as error:
            # (the group's checks name the group from the second one on)
            raise ValueError(f"load_state_dict: {'param group 0: ' if index == 0 else ''}{error}") from None
        if "iteration" in saved:
            check_iteration(f"param group {index}", saved["iteration"])
    state = state_dict.get("state", {})
    for where, param, entry in _saved_state_of_params(optimizer, groups, state):
        _check_param_state(where, param, entry)


def snapshot(optimizer: Any) -> Dict[str, Any]:
    """What a load may change: the optimizer's attributes, containers copied one level deep
    (the group dicts and state entries themselves are replaced by a load, never edited)."""
    copies: Dict[int, Any] = {}  # one copy per container: aliases (param_groups) stay aliases
    saved = {}
    for key, value in optimizer.__dict__.items():
        if isinstance(value, (dict, list, set)):
            value = copies.setdefault(id(value), copy.copy(value))
        saved[key] = value
    return saved


def restore(optimizer: Any, saved: Dict[str, Any]) -> None:
    optimizer.__dict__.clear()
    optimizer.__dict__.update(saved)

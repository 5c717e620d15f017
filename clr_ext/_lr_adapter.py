"""``opt.as_scheduler()``: a scheduled optimizer's own schedule, shown to frameworks as an LR scheduler.

CyclicSGD and OneCycleSGD advance their schedule inside ``step()``. Frameworks still want
an LR scheduler object: the HF ``Trainer`` builds one of its own when it gets none (which
then writes ``group["lr"]``: the optimizer warns and ignores it) and logs
``lr_scheduler.get_last_lr()``; Lightning accepts ``{"optimizer": opt, "lr_scheduler":
...}`` only with a ``torch.optim.lr_scheduler.LRScheduler`` (or an overridden
``lr_scheduler_step``) and saves and restores its state dict. :class:`ScheduleAdapter`
is that object: it changes nothing and reports what the optimizer does.

No framework is imported here.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.optim.lr_scheduler import LRScheduler

__all__ = ["ScheduleAdapter"]


def _check_same_schedule(optimizer: Any, saved: dict[str, Any]) -> None:
    """Refuses a PyTorch scheduler state dict that describes another schedule than the
    optimizer's: its position would mean another LR."""
    name = type(optimizer).__name__
    schedule = optimizer._schedule
    groups = optimizer.param_groups

    def differs(what: str, theirs: Any, ours: Any) -> ValueError:
        return ValueError(
            f"load_state_dict: the PyTorch scheduler state has {what}={theirs!r}, the {name}'s schedule "
            f"{ours!r}: it was saved for another schedule"
        )

    if "total_size" in saved:  # CyclicLR
        if schedule.kind != "cyclic":
            raise ValueError(f"load_state_dict: a CyclicLR state cannot move the {name}'s {schedule.kind} schedule")
        cycle = schedule.step_size_up + schedule.step_size_down
        if float(saved["total_size"]) != cycle:
            raise differs("total_size", saved["total_size"], cycle)
        for key, ours in (("base_lrs", "base_lr"), ("max_lrs", "max_lr")):
            mine = [group[ours] for group in groups]
            if key in saved and [float(v) for v in saved[key]] != mine:
                raise differs(key, saved[key], mine)
    elif "total_steps" in saved:  # OneCycleLR
        if schedule.kind != "one_cycle":
            raise ValueError(f"load_state_dict: a OneCycleLR state cannot move the {name}'s {schedule.kind} schedule")
        if int(saved["total_steps"]) != schedule.total_steps:
            raise differs("total_steps", saved["total_steps"], schedule.total_steps)
    else:
        raise ValueError(
            f"load_state_dict: a scheduler state with last_epoch but neither CyclicLR's total_size nor "
            f"OneCycleLR's total_steps: the {name} cannot tell whether it describes its schedule"
        )


class ScheduleAdapter(LRScheduler):
    """A read-only view of a scheduled optimizer's schedule, with the LRScheduler API.

    Made by :meth:`CyclicSGD.as_scheduler` (and every other ``clr_ext`` scheduled
    optimizer's). It is an instance of ``torch.optim.lr_scheduler.LRScheduler`` (so
    Lightning takes it without a custom ``lr_scheduler_step``), but it does not run
    ``LRScheduler.__init__``: it writes no ``group["lr"]`` or ``group["initial_lr"]`` and
    does not wrap ``optimizer.step``.

    - ``step(*args, **kwargs)`` changes nothing: the optimizer's ``step()`` already
      advanced the schedule. An epoch or a metric (ReduceLROnPlateau's call) is accepted
      and ignored.
    - ``get_last_lr()``: the LR of every group for the step in progress, as a torch
      scheduler stepped once per ``optimizer.step()`` reports it: before the optimizer's
      step, the LR that step will use (``optimizer.get_last_lr()``); after the optimizer's
      step and before this object's ``step()``, the LR that step used (which is what the
      HF Trainer logs). ``last_epoch`` is that step's index (``optimizer.iteration`` once
      ``step()`` has been called).
    - ``state_dict()`` / ``load_state_dict()``: a few numbers. The optimizer's own state
      dict carries the schedule and the iteration; loading this one changes nothing in
      the optimizer and warns when it was saved at another iteration than the
      optimizer's (the optimizer's state dict was not loaded with it). A PyTorch
      ``CyclicLR`` / ``OneCycleLR`` state dict, as the pair's checkpoints hold it, moves
      the optimizer to its ``last_epoch`` (checked first: a ``ValueError`` says what
      differs and nothing changes).
    """

    def __init__(self, optimizer: Any) -> None:  # (LRScheduler.__init__ is not called: see above)
        self.optimizer = optimizer
        # optimizer.iteration when step() was last called (or at creation, or loaded):
        # while the optimizer is ahead of it, its last step is "in progress".
        self._seen = optimizer.iteration
        self._step_count = 1  # as a torch scheduler after its __init__ (accelerate reads and bumps it)

    # ------------------------------------------------------------ what it reports

    def _in_progress(self) -> int:
        """The index of the step whose LR :meth:`get_last_lr` reports."""
        iteration = self.optimizer.iteration
        return iteration - 1 if iteration > self._seen else iteration

    @property
    def last_epoch(self) -> int:  # type: ignore[override]
        return self._in_progress()

    @last_epoch.setter
    def last_epoch(self, value: int) -> None:
        # The schedule's position is the optimizer's: a framework that sets it (none of the
        # usual ones does) is told, not ignored in silence.
        if int(value) != self._in_progress():
            raise AttributeError(
                f"clr_ext: the schedule's position is {type(self.optimizer).__name__}.iteration "
                f"({self.optimizer.iteration}); a ScheduleAdapter cannot set it to {value}. Load the "
                "optimizer's state dict to move it"
            )

    def get_last_lr(self) -> list[float]:
        """The LR of every group for the step in progress (see the class docstring)."""
        optimizer = self.optimizer
        iteration = optimizer.iteration
        if iteration > self._seen:  # between optimizer.step() and this step(): the LR it used
            return [optimizer._point(group, iteration - 1, i)[0] for i, group in enumerate(optimizer.param_groups)]
        return optimizer.get_last_lr()

    def get_lr(self) -> list[float]:
        """As :meth:`get_last_lr` (the schedule is computed by the optimizer)."""
        return self.get_last_lr()

    @property
    def _last_lr(self) -> list[float]:  # LRScheduler's attribute, for code that reads it
        return self.get_last_lr()

    @property
    def base_lrs(self) -> list[float]:  # type: ignore[override]
        """Every group's lower bound (``base_lr``; for the 1cycle policy the initial LR), as
        CyclicLR's and OneCycleLR's ``base_lrs``."""
        return [
            group["base_lr"] if "base_lr" in group else group["initial_lr"] for group in self.optimizer.param_groups
        ]

    # ----------------------------------------------------------------- stepping

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Does nothing to the schedule (the optimizer's step advanced it); ``args``
        (an epoch, a metric) are ignored."""
        self._step_count += 1
        self._seen = self.optimizer.iteration

    # --------------------------------------------------------------- state dict

    def state_dict(self) -> dict[str, Any]:
        """``{"iteration", "seen", "_step_count"}``: plain ints (loads with ``weights_only=True``)."""
        return {
            "iteration": int(self.optimizer.iteration),
            "seen": int(self._seen),
            "_step_count": int(self._step_count),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what this object reports between the optimizer's step and its own;
        changes nothing in the optimizer.

        A PyTorch scheduler's state dict (``CyclicLR``, ``OneCycleLR``: ``last_epoch``, no
        ``iteration``), as a framework's checkpoint written by the PyTorch pair holds it,
        carries the schedule's position, which a ``torch.optim`` optimizer's state dict
        lacks: the optimizer takes it up (see :meth:`_adopt_torch_position`)."""
        if "iteration" not in state_dict and "last_epoch" in state_dict:
            self._adopt_torch_position(state_dict)
            return
        iteration = self.optimizer.iteration
        saved = int(state_dict.get("iteration", iteration))
        self._step_count = int(state_dict.get("_step_count", self._step_count))
        if saved == iteration:
            self._seen = min(int(state_dict.get("seen", iteration)), iteration)
        else:
            self._seen = iteration
            warnings.warn(
                f"clr_ext: this scheduler state was saved at iteration {saved}, but the "
                f"{type(self.optimizer).__name__} is at iteration {iteration}. The optimizer's own state dict "
                "carries the schedule: load it (optimizer.load_state_dict) to resume there; the scheduler "
                "state changes nothing",
                UserWarning,
                stacklevel=2,
            )

    def _adopt_torch_position(self, state_dict: dict[str, Any]) -> None:
        """Moves the optimizer to a PyTorch scheduler's ``last_epoch`` (after ``k`` steps of
        the pair it is ``k``, the index of the next step, as ``optimizer.iteration``), once
        the saved scheduler is known to be the optimizer's schedule; else a ``ValueError``
        says what differs and nothing changes."""
        optimizer = self.optimizer
        name = type(optimizer).__name__
        position = state_dict["last_epoch"]
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"load_state_dict: last_epoch: must be a non-negative integer, got {position!r}")
        _check_same_schedule(optimizer, state_dict)
        iteration = optimizer.iteration
        if iteration not in (0, position):
            raise ValueError(
                f"load_state_dict: the PyTorch scheduler was saved at step {position}, but the {name} is at "
                f"iteration {iteration} (its own state dict says so): the two checkpoints disagree"
            )
        steps = [float(s["step"]) for s in optimizer.state.values() if isinstance(s, dict) and "step" in s]
        if steps and max(steps) > position:
            raise ValueError(
                f"load_state_dict: the PyTorch scheduler was saved at step {position}, but a parameter's AdamW "
                f"step count is {max(steps):g}: the optimizer's and the scheduler's checkpoints disagree"
            )
        if position != iteration:
            for group in optimizer.param_groups:
                group["iteration"] = position
            optimizer.iteration  # takes the groups' iteration up (counters, reported values)
        optimizer._position_unknown = False  # (it is known now)
        self._seen = position
        self._step_count = int(state_dict.get("_step_count", position + 1))

    def __repr__(self) -> str:
        return f"ScheduleAdapter({type(self.optimizer).__name__}, iteration={self.optimizer.iteration})"

"""Scheduled optimizers: a schedule (``schedules``) x an update rule (``sgd``, ``adamw``)
on one core (``core``, with the step's shared functions in ``functional`` and each op's
arguments as ``records``), run by a backend (``clr_ext.backends``)."""

from .adamw import AdamW, CyclicAdamW, OneCycleAdamW
from .convert import from_torch
from .sgd import SGD, CyclicSGD, OneCycleSGD

__all__ = ["SGD", "AdamW", "CyclicSGD", "OneCycleSGD", "CyclicAdamW", "OneCycleAdamW", "from_torch"]

"""Placeholder: the scheduler adapter (issue 16) is being written."""
from __future__ import annotations

from typing import Any


class ScheduleAdapter:
    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def step(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_last_lr(self) -> list:
        return self.optimizer.get_last_lr()

"""The HF Trainer with a clr_ext optimizer that the Trainer builds itself.

``Trainer(optimizers=(opt, opt.as_scheduler()))`` is the simple path (README). With
``optimizer_cls_and_kwargs=(clr_ext.CyclicSGD, {...})`` the Trainer builds the optimizer
(after wrapping the model, with its own weight-decay groups) and then builds its own LR
scheduler from ``args.lr_scheduler_type``; that scheduler writes ``group["lr"]``, which the
optimizer overrules (it warns once) while the Trainer logs the decay it did not apply.
:class:`OptimizerScheduleMixin` makes the Trainer take the optimizer's own schedule instead::

    from transformers import Trainer
    from clr_ext.integrations.transformers import OptimizerScheduleMixin

    class CLRTrainer(OptimizerScheduleMixin, Trainer):
        pass

    trainer = CLRTrainer(
        model=model, args=args, train_dataset=train_ds,
        optimizer_cls_and_kwargs=(clr_ext.CyclicSGD, {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2000, "momentum": 0.9}),
    )

The Trainer passes its parameter groups with ``"weight_decay": args.weight_decay`` (0 for
biases and norms), which override a ``weight_decay`` in the kwargs, as for any optimizer it
builds: set ``TrainingArguments(weight_decay=...)``.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["OptimizerScheduleMixin", "is_clr_optimizer"]


def is_clr_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the optimizer an accelerate/Lightning wrapper holds) is a
    clr_ext optimizer, which is its own LR scheduler."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return type(inner).__module__.split(".")[0] == "clr_ext" and callable(getattr(inner, "as_scheduler", None))


class OptimizerScheduleMixin:
    """Put it before ``transformers.Trainer`` in the bases: when the Trainer's optimizer is a
    clr_ext optimizer and no scheduler was given, the scheduler is ``optimizer.as_scheduler()``
    (the optimizer's own schedule, which the Trainer then logs), not ``args.lr_scheduler_type``."""

    lr_scheduler: Any
    optimizer: Any

    def create_scheduler(self, num_training_steps: int, optimizer: Optional[Any] = None) -> Any:
        target = optimizer if optimizer is not None else self.optimizer
        if self.lr_scheduler is None and is_clr_optimizer(target):
            self.lr_scheduler = getattr(target, "optimizer", target).as_scheduler()
        return super().create_scheduler(num_training_steps, optimizer)  # type: ignore[misc]

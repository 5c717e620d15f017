"""clr_ext's range test for the Hugging Face ``Trainer``: test on the trainer's model and
training dataloader, then hand the trainer a clr_ext optimizer built from the result.

    from clr_ext.range_test.hf import use_range_test

    trainer = Trainer(model=model, args=args, train_dataset=train_ds)
    result = use_range_test(trainer, clr_ext.CyclicAdamW, num_iters=100)
    trainer.train()

Importing this module needs nothing beyond torch; the function needs a ``transformers``
``Trainer`` (it uses ``get_train_dataloader()`` and ``args``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import torch

from .result import RangeTestResult, optimizer_for_run
from .run import range_test

__all__ = ["use_range_test"]


def _model_loss(model: torch.nn.Module, batch: Dict[str, Any]) -> torch.Tensor:
    """A Hugging Face model computes its own loss from a batch that carries ``labels``."""
    return model(**batch).loss


def use_range_test(
    trainer: Any,
    cls: Optional[type] = None,
    *,
    optimizer_kwargs: Optional[Dict[str, Any]] = None,
    step_fn: Optional[Callable[[torch.nn.Module, Any], torch.Tensor]] = None,
    **range_test_kwargs: Any,
) -> RangeTestResult:
    """Run :func:`clr_ext.range_test` on ``trainer.model`` with ``trainer.get_train_dataloader()``
    and set ``trainer.optimizer`` / ``trainer.lr_scheduler`` to ``cls.from_range_test(...)``
    and its ``as_scheduler()`` adapter (the Trainer keeps an optimizer and a scheduler that
    are already set, and logs the adapter's LR). Returns the result.

    ``cls``: :class:`clr_ext.CyclicAdamW` by default (then the test sweeps with
    ``optimizer="adamw"``, AdamW's own scale, unless ``optimizer`` is given), or
    ``CyclicSGD``, ``OneCycleSGD``, ``OneCycleAdamW``. The run's length is the Trainer's
    (``max_steps``, or ``num_train_epochs`` of ``ceil(batches / gradient_accumulation_steps)``
    optimizer steps, as the Trainer counts them), so a cyclical schedule ends at the end of
    a whole cycle. From ``trainer.args``: ``accumulation_steps``
    (``gradient_accumulation_steps``), ``amp`` (``bf16`` / ``fp16``) and ``device``. Each
    step's loss is ``model(**batch).loss`` unless ``step_fn`` is given; ``range_test_kwargs``
    go to :func:`clr_ext.range_test`, ``optimizer_kwargs`` to ``from_range_test``
    (``weight_decay``, ``betas``, ``epochs_per_half_cycle``...).
    """
    from .. import CyclicAdamW, OneCycleAdamW

    cls = CyclicAdamW if cls is None else cls
    args = trainer.args
    loader = trainer.get_train_dataloader()
    accumulation = int(args.gradient_accumulation_steps)
    per_epoch = max(len(loader) // accumulation + int(len(loader) % accumulation > 0), 1)
    total = int(args.max_steps) if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    kwargs = dict(range_test_kwargs)
    if cls in (CyclicAdamW, OneCycleAdamW):
        kwargs.setdefault("optimizer", "adamw")
    kwargs.setdefault("accumulation_steps", accumulation)
    kwargs.setdefault("amp", torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None)
    kwargs.setdefault("device", args.device)
    kwargs.setdefault("progress", not args.disable_tqdm)
    result = range_test(trainer.model, loader, None, step_fn=step_fn or _model_loss, **kwargs)
    opt = optimizer_for_run(cls, trainer.model.parameters(), result, per_epoch, total, **(optimizer_kwargs or {}))
    trainer.optimizer, trainer.lr_scheduler = opt, opt.as_scheduler()
    return result

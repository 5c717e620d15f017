"""clr_ext's range test in Lightning, in the place of Lightning's ``LearningRateFinder``
(whose sweep writes ``group["lr"]``, which a clr_ext optimizer overrules).

    from clr_ext.range_test.lightning import RangeTest, configure_cyclic

    class Module(L.LightningModule):
        def configure_optimizers(self):
            return configure_cyclic(self, clr_ext.CyclicSGD, momentum=0.9)

    trainer = L.Trainer(max_epochs=8, callbacks=[RangeTest(num_iters=200)])
    trainer.fit(module, train_loader)

:class:`RangeTest` runs :func:`clr_ext.range_test` on the module and the trainer's training
dataloader when ``configure_optimizers`` asks for its result (:func:`configure_cyclic`, or
:func:`range_test_result` in your own), before the first training step, and leaves the
result on the module (``module.range_test_result``); :func:`configure_cyclic` builds the
optimizer from it with the run's length from the trainer, so the run ends at the end of a
cycle.
Importing this module needs ``lightning`` (2.x).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Optional

import lightning.pytorch as pl
import torch

from .result import RangeTestResult, optimizer_for_run
from .run import range_test

__all__ = ["RangeTest", "configure_cyclic", "range_test_result"]

# Lightning's mixed precisions, as range_test's amp.
_AMP = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class RangeTest(pl.Callback):
    """Runs :func:`clr_ext.range_test` before fitting, on the LightningModule and the
    trainer's training dataloader, and sets ``module.<attr_name>`` (default
    ``range_test_result``) to the :class:`~clr_ext.RangeTestResult`, for
    ``configure_optimizers`` to build the optimizer from (:func:`configure_cyclic`).

    The test runs when ``configure_optimizers`` asks for the result (:func:`configure_cyclic`
    or :func:`range_test_result`; else at ``on_fit_start``), after the strategy has moved the
    model to its device and, for a resumed fit, restored the callback's state: the model is
    restored exactly afterwards (``range_test``'s ``restore``). Under DDP every rank tests
    its own (unwrapped) module on its own batches, the losses averaged over the ranks.
    Each step's loss is the module's ``training_step(batch, batch_idx)`` (its ``self.log``
    calls are muted during the test), unless ``step_fn=(module, batch) -> loss`` is given,
    or ``loss_fn=(outputs, targets) -> loss`` (then ``module(inputs)`` on ``(inputs, targets)``
    batches, which also allows ``metric="accuracy"`` with a ``val_loader``).
    From the trainer: ``accumulation_steps`` (``accumulate_grad_batches``), ``amp``
    (``"bf16-mixed"``/``"16-mixed"`` precision), ``device``, and the progress bar (rank 0,
    when the trainer shows one). Every other keyword goes to :func:`clr_ext.range_test`
    (``num_iters``, ``sweep``, ``start_lr``, ``end_lr``, ``optimizer="adamw"``, ``val_loader``
    with ``loss_fn`` and ``metric``, ``snapshot``...).

    The result is kept in the callback's state, so a fit resumed from a checkpoint reads
    the same bounds instead of testing again. Modules with manual optimization are refused
    (their ``training_step`` steps its own optimizers): pass a ``step_fn``.
    """

    def __init__(
        self,
        *,
        attr_name: str = "range_test_result",
        step_fn: Optional[Callable[[torch.nn.Module, Any], torch.Tensor]] = None,
        **range_test_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(attr_name, str) or not attr_name.isidentifier():
            raise ValueError(f"attr_name must be an identifier, got {attr_name!r}")
        if step_fn is not None and not callable(step_fn):
            raise TypeError("step_fn must be callable: (module, batch) -> scalar loss tensor")
        for fixed in ("model", "train_loader", "restore"):
            if fixed in range_test_kwargs:
                raise ValueError(f"{fixed}: RangeTest takes it from the trainer")
        self.attr_name = attr_name
        self.step_fn = step_fn
        self.kwargs = range_test_kwargs
        self.result: Optional[RangeTestResult] = None
        self._module: Optional[pl.LightningModule] = None

    def result_for(self, trainer: pl.Trainer, module: pl.LightningModule) -> RangeTestResult:
        """The result, testing now if this fit has none yet (neither tested nor restored from
        a checkpoint); also set on the module."""
        if self.result is None:
            self.result = self._run(trainer, module)
        setattr(module, self.attr_name, self.result)
        return self.result

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Not tested yet: a resumed fit restores the callbacks' state after setup, and the
        # test must not run then. configure_optimizers asks for the result
        # (configure_cyclic, range_test_result), after that restore.
        if stage == "fit":
            self._module = pl_module

    def _run(self, trainer: pl.Trainer, module: pl.LightningModule) -> RangeTestResult:
        kwargs: Dict[str, Any] = dict(self.kwargs)
        loss_fn = kwargs.pop("loss_fn", None)
        step_fn = self.step_fn
        if step_fn is None and loss_fn is None:
            if not module.automatic_optimization:
                raise ValueError(
                    "RangeTest: this module uses manual optimization, so its training_step steps its own "
                    "optimizers; pass step_fn=(module, batch) -> loss"
                )
            step_fn = _training_step_loss
        trainer.fit_loop.setup_data()  # what fit would load; fit reuses it
        loader = trainer.train_dataloader
        kwargs.setdefault("accumulation_steps", trainer.accumulate_grad_batches)
        kwargs.setdefault("amp", _AMP.get(str(trainer.precision)))
        kwargs.setdefault("device", trainer.strategy.root_device)
        kwargs.setdefault("progress", trainer.is_global_zero and trainer.progress_bar_callback is not None)
        with _muted_logging(module):
            return range_test(module, loader, loss_fn, step_fn=step_fn, **kwargs)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A configure_optimizers that did not ask still finds the result on the module.
        self.result_for(trainer, pl_module)

    def state_dict(self) -> Dict[str, Any]:
        return {"result": None if self.result is None else self.result.to_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = state_dict.get("result")
        self.result = None if saved is None else RangeTestResult.from_dict(saved)
        if self.result is not None and self._module is not None:
            setattr(self._module, self.attr_name, self.result)


def _training_step_loss(module: pl.LightningModule, batch: Any) -> torch.Tensor:
    out = module.training_step(batch, 0)
    loss = out.get("loss") if isinstance(out, dict) else out
    if not torch.is_tensor(loss):
        raise TypeError(
            f"RangeTest: training_step returned {type(out).__name__}, not a loss tensor (or a dict with "
            "'loss'); pass step_fn=(module, batch) -> loss"
        )
    return loss


@contextlib.contextmanager
def _muted_logging(module: pl.LightningModule):
    """``self.log`` is refused outside Lightning's loops (and would log the test's steps as
    training): instance attributes shadow the methods for the test's duration."""

    def no_log(*args: Any, **kwargs: Any) -> None:
        return None

    module.log = no_log
    module.log_dict = no_log
    try:
        yield
    finally:
        del module.log
        del module.log_dict


def range_test_result(module: pl.LightningModule, attr_name: str = "range_test_result") -> RangeTestResult:
    """For ``configure_optimizers``: the :class:`RangeTest` callback's result for this fit
    (tested on first request, or restored from the checkpoint of a resumed fit)."""
    trainer = module.trainer
    for callback in trainer.callbacks:
        if isinstance(callback, RangeTest) and callback.attr_name == attr_name:
            return callback.result_for(trainer, module)
    result = getattr(module, attr_name, None)
    if isinstance(result, RangeTestResult):
        return result
    raise ValueError(
        f"the module has no {attr_name!r} range-test result; add "
        "clr_ext.range_test.lightning.RangeTest() to the trainer's callbacks"
    )


def configure_cyclic(
    module: pl.LightningModule, cls: Optional[type] = None, *, attr_name: str = "range_test_result", **kwargs: Any
) -> Dict[str, Any]:
    """``configure_optimizers``' return value for a range-tested module: ``cls`` (default
    :class:`clr_ext.CyclicSGD`; also ``CyclicAdamW``, ``OneCycleSGD``, ``OneCycleAdamW``)
    built by its ``from_range_test`` from ``module.<attr_name>``, for the trainer's run:
    ``trainer.estimated_stepping_batches`` optimizer steps (``max_epochs``, ``max_steps``
    and gradient accumulation counted), so a cyclical schedule ends the run at the end of a
    whole cycle; with its ``as_scheduler()`` adapter, stepped per batch, for Lightning's LR
    logging. ``kwargs`` go to ``from_range_test`` (``momentum``, ``weight_decay``,
    ``epochs_per_half_cycle``...)."""
    from .. import CyclicSGD  # the optimizers import nothing from here: no cycle at import

    cls = CyclicSGD if cls is None else cls
    result = range_test_result(module, attr_name)
    trainer = module.trainer
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError("configure_cyclic: the run has no end (max_epochs=-1, max_steps=-1); give it a length")
    per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
    opt = optimizer_for_run(cls, module.parameters(), result, per_epoch, int(total), **kwargs)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": opt.as_scheduler(), "interval": "step"}}

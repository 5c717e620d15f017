"""Gradient clipping for clr_ext optimizers in Lightning.

Lightning refuses ``gradient_clip_val`` under ``precision="16-mixed"`` *and*
``"bf16-mixed"`` for every optimizer whose ``step()`` unscales the gradients itself
(``_step_supports_amp_scaling``, as clr_ext's and torch's fused optimizers have): its
precision plugin raises ``RuntimeError: The current optimizer, CyclicSGD, does not allow for
gradient clipping because it performs unscaling of gradients internally``, whether or not a
grad scaler exists.

The supported path is Lightning's own hook, ``LightningModule.configure_gradient_clipping``,
which runs where Lightning would clip (after backward and the accumulation, before the
step). :class:`GradientClippingMixin` overrides it::

    import lightning as L
    from clr_ext.integrations.lightning import GradientClippingMixin

    class Model(GradientClippingMixin, L.LightningModule):
        ...

    L.Trainer(precision="bf16-mixed", gradient_clip_val=1.0).fit(Model())

It clips as Lightning clips other optimizers (``torch.nn.utils.clip_grad_norm_`` or
``clip_grad_value_`` over the optimizer's parameters, ``gradient_clip_algorithm`` honoured),
so a run gives the numbers of ``torch.optim.SGD`` + ``CyclicLR`` with the same clipping
(``tests/integrations/test_frameworks.py``). Under ``"16-mixed"`` the gradients are still scaled at that
point: it first unscales them with the Trainer's scaler (``scaler.unscale_(optimizer)``,
as in a plain AMP loop), and the optimizer's step then only skips steps with infs. Other
optimizers go through Lightning's own clipping unchanged.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Union

import torch

__all__ = ["GradientClippingMixin", "clip_gradients"]


def _unscales_in_step(optimizer: Any) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the real one
    return bool(getattr(inner, "_step_supports_amp_scaling", False))


def _parameters(optimizer: Any) -> Iterator[torch.Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]


def clip_gradients(
    module: Any,
    optimizer: Any,
    gradient_clip_val: Optional[Union[int, float]] = None,
    gradient_clip_algorithm: Optional[str] = None,
) -> None:
    """Clip ``optimizer``'s gradients for the LightningModule ``module``, as Lightning would
    if it allowed it: the body of :meth:`GradientClippingMixin.configure_gradient_clipping`,
    for modules that override that hook themselves.

    Optimizers that do not unscale in their step are handed to Lightning's own
    ``module.clip_gradients``."""
    if not _unscales_in_step(optimizer):
        module.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )
        return
    if not gradient_clip_val:
        return
    algorithm = str(getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm) or "norm")
    if algorithm not in ("norm", "value"):
        raise ValueError(f"gradient_clip_algorithm: expected 'norm' or 'value', got {gradient_clip_algorithm!r}")
    if gradient_clip_val < 0:
        raise ValueError(f"gradient_clip_val: expected a number >= 0, got {gradient_clip_val!r}")
    trainer = getattr(module, "trainer", None)
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is not None and scaler.is_enabled():
        # 16-mixed: the gradients are still multiplied by the loss scale here. Unscaling
        # them now records the step as unscaled, so the optimizer only checks for infs.
        scaler.unscale_(getattr(optimizer, "optimizer", optimizer))
    params = list(_parameters(optimizer))
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
    else:
        torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))


class GradientClippingMixin:
    """Put it before ``LightningModule`` in the bases: ``gradient_clip_val`` and
    ``gradient_clip_algorithm`` of the Trainer then work with clr_ext optimizers under every
    precision (see the module's docstring)."""

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

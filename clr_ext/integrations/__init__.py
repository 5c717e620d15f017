"""Small adapters for the training frameworks' conventions (none is imported by ``clr_ext``;
each imports nothing from its framework at module level, so importing them is free).

- :mod:`clr_ext.integrations.lightning`: gradient clipping under Lightning's mixed precision
  (``GradientClippingMixin``).
- :mod:`clr_ext.integrations.transformers`: the HF Trainer building a clr_ext optimizer from
  ``optimizer_cls_and_kwargs`` and logging its schedule (``OptimizerScheduleMixin``).
"""

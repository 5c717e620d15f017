"""The learning-rate range test (Smith 2017, sec. 3.3) and the CLR bounds it suggests.

The test trains a model for a few hundred steps while the learning rate (LR) rises from
``start_lr`` to ``end_lr``, records the loss (and optionally a metric such as accuracy) at
every step, and reads off a ``(base_lr, max_lr)`` range for cyclical learning rates.

Unlike the usual LR finders (which suggest one LR), :func:`range_test` suggests the RANGE
that CLR needs, read the paper's way; see :func:`range_test` for the exact method, and
:meth:`RangeTestResult.suggest` for single LRs read the other finders' ways.

Layout: :mod:`.run` (the training loop), :mod:`.reading` (reading the curve: smoothing, the
bounds, the single-LR suggestions), :mod:`.result` (:class:`RangeTestResult`: plot, JSON).
"""

from .reading import SUGGEST_METHODS
from .reading import centered_mean as _centered_mean
from .reading import half_width as _half_width
from .reading import suggest_bounds as _suggest_bounds
from .reading import sweep_lrs as _sweep_lrs
from .result import RangeTestResult
from .run import _ModelSnapshot, range_test

__all__ = ["range_test", "RangeTestResult", "SUGGEST_METHODS"]
# Private names kept importable from here, as they were from the former single module.
_PRIVATE = (_centered_mean, _half_width, _suggest_bounds, _sweep_lrs, _ModelSnapshot)

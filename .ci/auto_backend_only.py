"""pytest plugin for CI's extra per-backend pass (.ci/run, ``-p auto_backend_only`` with .ci on
PYTHONPATH): keeps only the tests that take their backend from ``CLR_EXT_BACKEND`` (the
``backend="auto"`` default). The tests parametrised over the ``backend`` fixture
(tests/conftest.py) already ran on every built backend, this one included, in the README
command's run on the same install; running them again would repeat the same numbers."""

from __future__ import annotations

from typing import Any, List


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    keep, done = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        (done if "backend" in params else keep).append(item)
    if done:
        config.hook.pytest_deselected(items=done)
        items[:] = keep

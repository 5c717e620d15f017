"""pytest plugin for CI's extra per-backend passes (``-p auto_backend_only`` with .ci on
PYTHONPATH): keeps only the tests that take their backend from ``CLR_EXT_BACKEND`` (the
``backend="auto"`` default). The tests parametrised over the ``backend`` fixture
(tests/conftest.py) already ran on every built backend, this one included, in the README
command's run; running them again would repeat the same numbers.

``AUTO_BACKEND_ONLY_KEEP``: test files (space-separated paths) whose backend-parametrised
tests are kept all the same: on the install without a compiler (.ci/install_checks.sh) the
checks run through their pure-Python twins, which only those files' error cases reach."""

from __future__ import annotations

import os
from typing import Any, List


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    keep_files = set(os.environ.get("AUTO_BACKEND_ONLY_KEEP", "").split())
    keep, done = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        in_kept_file = item.nodeid.split("::")[0] in keep_files
        (done if "backend" in params and not in_kept_file else keep).append(item)
    if done:
        config.hook.pytest_deselected(items=done)
        items[:] = keep

"""Every op clr_ext declares, and their fake (meta) implementations.

Every clr_ext op mutates its inputs in place and returns nothing, so one fake serves them
all: registering it lets torch.compile trace through an op (FakeTensor propagation) and
``torch.library.opcheck`` test it. The compiled ops (``cyclic_sgd_``, ``cyclic_adamw_``)
exist once ``clr_ext._C`` is loaded (their schemas are in csrc); the ops written in Python
are declared through ``define``: ``advance_schedule_`` (clr_ext.optim.core) and the ops
through which the Python backends run in a traced step (clr_ext.backends, their schemas
derived from clr_ext.optim.records).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

#: The ops clr_ext._C defines (csrc/op/check.cpp).
COMPILED_OPS = ("cyclic_sgd_", "cyclic_adamw_")

# A plain Library fragment rather than torch.library.custom_op: ~4 us per call, not ~18.
_LIBRARY = torch.library.Library("clr_ext", "FRAGMENT")


def returns_nothing(*args: Any, **kwargs: Any) -> None:
    """The fake of an op that writes its inputs and returns nothing."""
    return None


def register_fake(name: str) -> None:
    torch.library.register_fake("clr_ext::" + name)(returns_nothing)


def register_compiled_op_fakes() -> None:
    for name in COMPILED_OPS:
        register_fake(name)


def define(schema: str, implementation: Callable[..., None]) -> None:
    """Declares an op written in Python: its schema, its one implementation (every device)
    and its fake."""
    name = schema.split("(", 1)[0]
    _LIBRARY.define(schema)
    _LIBRARY.impl(name, implementation, "CompositeExplicitAutograd")
    register_fake(name)

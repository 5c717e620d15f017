"""Fake (meta) implementations of clr_ext's ops, for torch.compile and ``torch.library.opcheck``.

Every clr_ext op mutates its inputs in place and returns nothing, so one fake serves them
all: registering it lets torch.compile trace through an op (FakeTensor propagation).
The compiled ops (``cyclic_sgd_``, ``cyclic_adamw_``) exist once ``clr_ext._C`` is
loaded; the ops written in Python register the same fake where they are defined.
"""

from __future__ import annotations

from typing import Any

import torch

#: The ops clr_ext._C defines (csrc/ops.cpp).
COMPILED_OPS = ("cyclic_sgd_", "cyclic_adamw_")


def returns_nothing(*args: Any, **kwargs: Any) -> None:
    """The fake of an op that writes its inputs and returns nothing."""
    return None


def register_fake(name: str) -> None:
    torch.library.register_fake("clr_ext::" + name)(returns_nothing)


def register_compiled_op_fakes() -> None:
    for name in COMPILED_OPS:
        register_fake(name)

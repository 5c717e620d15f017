"""Counts the Python functions and statements one eager optimizer step runs.

The figure of issue 20: from ``opt.step()`` to the op call and back, every function
defined in clr_ext that runs during one steady-state step (buffers exist) is listed
with its statements, counted by an ``ast`` walk over the function's whole body (nested
functions apart). Reproducible; no timing.

    python bench/step_path.py                       # CyclicSGD, cpp, CPU
    python bench/step_path.py --cls CyclicAdamW --backend cython
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import sys
import textwrap
import warnings

import torch

import clr_ext

_ROOT = os.path.dirname(os.path.abspath(clr_ext.__file__))


def _statements(code) -> int:
    """Statements in the function's body (its nested functions and classes not counted)."""
    try:
        source = textwrap.dedent(inspect.getsource(code))
    except (OSError, TypeError):
        return 0
    node = ast.parse(source).body[0]
    count = 0
    stack = list(getattr(node, "body", []))
    while stack:
        stmt = stack.pop()
        count += 1
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(getattr(stmt, field, []) or [])
        if isinstance(stmt, ast.Match):
            for case in stmt.cases:
                stack.extend(case.body)
    # a docstring is not a statement of the path
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        count -= 1
    return count


def _is_op(function) -> bool:
    """A call into the compiled step (``_C``'s or the Cython module's entries)."""
    module = getattr(function, "__module__", None) or ""
    name = getattr(function, "__name__", "")
    return (module.startswith("clr_ext.") or module in ("_C", "_cpu")) and name.startswith("cyclic_")


def trace_step(opt) -> tuple:
    """``(functions before the first op call, functions of the whole step)``, in call order."""
    seen: dict = {}
    before_op: list = []

    def profiler(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code.co_filename.startswith(_ROOT) and not code.co_name.startswith("<"):
                seen.setdefault(code, None)
        elif event == "c_call" and not before_op and _is_op(arg):
            before_op.extend(seen)

    sys.setprofile(profiler)
    try:
        opt.step()
    finally:
        sys.setprofile(None)

    def rows(codes):
        base = os.path.dirname(_ROOT)
        return [(os.path.relpath(c.co_filename, base), c.co_firstlineno, c.co_name, _statements(c)) for c in codes]

    return rows(before_op), rows(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cls", default="CyclicSGD")
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--params", type=int, default=4)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    params = [torch.zeros(3, requires_grad=True) for _ in range(args.params)]
    for p in params:
        p.grad = torch.ones(3)
    cls = getattr(clr_ext, args.cls)
    kw = {"momentum": 0.9} if args.cls.endswith("SGD") else {}
    if args.cls.startswith("Cyclic"):
        opt = cls(params, 0.001, 0.01, backend=args.backend, **kw)
    else:
        opt = cls(params, 0.01, total_steps=1000, backend=args.backend, **kw)
    for _ in range(3):
        opt.step()
    to_op, whole = trace_step(opt)
    for path, line, name, n in whole:
        print(f"{n:4d}  {path}:{line} {name}{'' if (path, line, name, n) in to_op else '  (after the op)'}")
    what = f"({args.cls}, {args.backend}, {args.params} params)"
    print(f"to the op call: {len(to_op)} functions, {sum(r[3] for r in to_op)} statements {what}")
    print(f"whole step:     {len(whole)} functions, {sum(r[3] for r in whole)} statements")


if __name__ == "__main__":
    main()

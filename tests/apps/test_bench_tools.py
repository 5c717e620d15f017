"""The benchmark tools run (they are not timed here: no timing is ever asserted in tests).

bench/ is not part of the test run, so these keep its scripts from rotting: the paired
interleaved timer on the smallest model, and report.py on a JSON of the rules suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import clr_ext

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif("cpp" not in clr_ext.available_backends(), reason="the bench variants use cpp")


def _run(*args):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    ).stdout


def test_interleaved_reports_paired_ratios():
    out = _run("-m", "bench.interleaved", "--model", "200x1", "--rounds", "4", "--warmup", "1",
               "adamw_fused_cyclic", "clr_cyclic_adamw_fused", "clr_cyclic_adamw")  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [row.split("|")[1].strip() for row in rows] == [
        "adamw_fused_cyclic",
        "clr_cyclic_adamw_fused",
        "clr_cyclic_adamw",
    ]
    assert "1.00x (1.00-1.00)" in rows[0]  # the reference against itself, round by round


def test_report_reads_the_rules_suite(tmp_path):
    path = tmp_path / "rules.json"
    _run("-m", "pytest", "bench/test_bench_rules.py", "-q", "-p", "no:cacheprovider", "--benchmark-only",
         "--benchmark-min-rounds=1", "-k", "200x1- and (clr_cyclic_adamw_fused or adamw_fused_cyclic)",
         "--benchmark-json=%s" % path)  # fmt: skip
    variants = {b["extra_info"]["variant"] for b in json.loads(path.read_text())["benchmarks"]}
    assert variants == {"clr_cyclic_adamw_fused", "adamw_fused_cyclic"}
    out = _run("bench/report.py", str(path))
    assert "CyclicAdamW cpp, fused=True" in out and "AdamW fused + CyclicLR" in out

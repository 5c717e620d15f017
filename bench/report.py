"""Turns a pytest-benchmark JSON of bench/test_bench_cpu.py and bench/test_bench_rules.py
into ratio tables.

    pytest bench/ --benchmark-only --benchmark-json=bench/results.json
    python bench/report.py bench/results.json [more.json ...]

For every model size: the median time per optimizer iteration of each variant, the
speed-up against PyTorch's fused step of the same rule (SGD or AdamW, + the scheduler)
and, for SGD, its foreach step (their median / this median: > 1 means faster), the
memory throughput achieved (bytes moved per step / median), and the issues' targets,
judged on medians from the same run. Several JSON files are reported one after the other
(one table per run), never mixed.
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List

ORDER = [
    "clr_cpp",
    "clr_cython",
    "clr_torch",
    "sgd_fused",
    "sgd_foreach",
    "sgd_forloop",
    "clr_cpp_compiled",
    "sgd_compiled",
    "clr_cpp_device_path",
    "sgd_fused_lr_tensor",
    "floor",
    "clr_cyclic_sgd",
    "clr_onecycle_sgd",
    "clr_cyclic_adamw",
    "clr_onecycle_adamw",
    "clr_cyclic_adamw_fused",
    "adamw_fused_cyclic",
    "adamw_fused_onecycle",
    "adamw_forloop_cyclic",
    "adamw_floor",
]
LABEL = {
    "clr_cpp": "CyclicSGD cpp",
    "clr_cython": "CyclicSGD cython",
    "clr_torch": "CyclicSGD torch",
    "sgd_fused": "SGD fused + CyclicLR",
    "sgd_foreach": "SGD foreach + CyclicLR",
    "sgd_forloop": "SGD for-loop + CyclicLR",
    "clr_cpp_compiled": "CyclicSGD cpp, step compiled",
    "sgd_compiled": "SGD (tensor lr) step compiled + CyclicLR",
    "clr_cpp_device_path": "CyclicSGD cpp, a CUDA step's path (starts decided by the op)",
    "sgd_fused_lr_tensor": "SGD fused, lr tensor + CyclicLR",
    "floor": "floor: 20 B/param (flat add_ + mul_)",
    "clr_cyclic_sgd": "CyclicSGD cpp",
    "clr_onecycle_sgd": "OneCycleSGD cpp",
    "clr_cyclic_adamw": "CyclicAdamW cpp (AdamW()'s numbers)",
    "clr_onecycle_adamw": "OneCycleAdamW cpp (AdamW()'s numbers)",
    "clr_cyclic_adamw_fused": "CyclicAdamW cpp, fused=True (AdamW(fused=True)'s numbers)",
    "adamw_fused_cyclic": "AdamW fused + CyclicLR",
    "adamw_fused_onecycle": "AdamW fused + OneCycleLR",
    "adamw_forloop_cyclic": "AdamW for-loop + CyclicLR",
    "adamw_floor": "floor: 28 B/param (flat add_ + 2 mul_)",
}


def _reference(variant: str) -> str:
    """The torch fused step a variant is set against: that of its own update rule."""
    return "adamw_fused_cyclic" if "adamw" in variant else "sgd_fused"


MODEL_ORDER = ["200x1K", "200x1", "resnet18", "50M"]
# (model, variant, reference, minimum speed-up) -- the targets.
TARGETS = [
    ("200x1K", "clr_cpp", "sgd_fused", 3.0),
    ("resnet18", "clr_cpp", "sgd_fused", 1.0),
    ("50M", "clr_cpp", "sgd_fused", 1.0),
    ("200x1K", "clr_cython", "sgd_foreach", 2.0),
    ("50M", "clr_cython", "clr_cpp", 1.0 / 1.5),  # "within 1.5x of cpp"
    # issue 13 (AdamW)
    ("200x1", "clr_cyclic_adamw", "adamw_fused_cyclic", 5.0),
    ("200x1K", "clr_cyclic_adamw", "adamw_fused_cyclic", 3.0),
    ("resnet18", "clr_cyclic_adamw_fused", "adamw_fused_cyclic", 1.0),
    ("50M", "clr_cyclic_adamw_fused", "adamw_fused_cyclic", 1.0),
]


def _fmt_time(seconds: float) -> str:
    return "%.3f ms" % (seconds * 1e3) if seconds >= 1e-4 else "%.1f us" % (seconds * 1e6)


def load(path: str) -> Dict[str, Dict[str, dict]]:
    with open(path) as f:
        data = json.load(f)
    runs: Dict[str, Dict[str, dict]] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "model" not in info:
            continue
        runs.setdefault(info["model"], {})[info["variant"]] = {**b["stats"], **info}
    return runs, data


def table(runs: Dict[str, Dict[str, dict]]) -> List[str]:
    out = []
    for model in [m for m in MODEL_ORDER if m in runs] + [m for m in runs if m not in MODEL_ORDER]:
        rows = runs[model]
        any_row = next(iter(rows.values()))
        out.append("")
        out.append(
            "**%s**: %s fp32 parameters in %s tensors"
            % (model, format(any_row["n_params"], ","), any_row.get("n_tensors", "?"))
        )
        out.append("")
        out.append("| variant | median | IQR | rounds | vs torch fused (same rule) | vs foreach | GB/s |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        foreach = rows.get("sgd_foreach", {}).get("median")
        for v in [v for v in ORDER if v in rows] + [v for v in rows if v not in ORDER]:
            r = rows[v]
            med = r["median"]
            fused = rows.get(_reference(v), {}).get("median")
            if "adamw" in v:
                foreach = None
            out.append(
                "| %s | %s | %s | %d | %s | %s | %.1f |"
                % (
                    LABEL.get(v, v),
                    _fmt_time(med),
                    _fmt_time(r["iqr"]),
                    r["rounds"],
                    "%.2fx" % (fused / med) if fused else "-",
                    "%.2fx" % (foreach / med) if foreach else "-",
                    r["bytes_per_step"] / med / 1e9,
                )
            )
    return out


def targets(runs: Dict[str, Dict[str, dict]]) -> List[str]:
    out = ["", "| target | measured (median ratio) | met |", "|---|---:|:---:|"]
    for model, variant, ref, want in TARGETS:
        rows = runs.get(model, {})
        if variant not in rows or ref not in rows:
            continue
        speedup = rows[ref]["median"] / rows[variant]["median"]
        if ref == "clr_cpp":
            text = "%s: %s within 1.5x of %s" % (model, LABEL[variant], LABEL[ref])
            measured = "%.2fx the time of cpp" % (1.0 / speedup)
        else:
            text = "%s: %s >= %.1fx faster than %s" % (model, LABEL[variant], want, LABEL[ref])
            measured = "%.2fx" % speedup
        out.append("| %s | %s | %s |" % (text, measured, "yes" if speedup >= want else "**no**"))
    return out


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for path in argv:
        runs, data = load(path)
        meta = data.get("clr_ext", {})
        mi = data.get("machine_info", {})
        print("### %s" % path)
        print("")
        print(
            "%s; %s; torch %s, %s threads; loadavg %s -> %s; %s"
            % (
                data.get("datetime", "?"),
                mi.get("cpu", {}).get("brand_raw", "?"),
                meta.get("torch", "?"),
                meta.get("threads", "?"),
                meta.get("loadavg_start", "?"),
                meta.get("loadavg_end", "?"),
                "median per optimizer iteration (step + scheduler step)",
            )
        )
        print("\n".join(table(runs)))
        print("\n".join(targets(runs)))
        print("")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

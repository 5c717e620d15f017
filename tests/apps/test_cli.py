"""Tests of the clr-ext command line (clr_ext.apps.cli.main, and python -m clr_ext)."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from clr_ext.apps import cli
from clr_ext.range_test import RangeTestResult

PNG = b"\x89PNG\r\n\x1a\n"
DEMO_POLICIES = [
    "fixed (range test)",
    "triangular",
    "triangular2",
    "exp_range",
    "decay",
    "exp",
    "1cycle",
    "triangular (AdamW)",
    "1cycle (AdamW)",
]


@pytest.fixture(autouse=True)
def restore_threads():
    # The commands set torch's thread count for the process; put it back for other tests.
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def write_fake_cifar10(folder, n_per_batch=10, n_test=10, seed=0):
    """A tiny CIFAR-10 in the real python-pickle batch format."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_batch
        d = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=2)


def one_line_error(err: str, rc: int):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err


# --------------------------------------------------------------------------- help
def test_help_works(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "range-test", "reproduce-cifar10", "info"):
        assert command in out
    assert "base_lr" in out and "clr-ext demo" in out
    for command in ("demo", "range-test", "reproduce-cifar10", "info"):
        assert cli.main([command, "--help"]) == 0
        assert "usage: clr-ext " + command in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--seeds", "-1"],
        ["demo", "--seeds", "abc"],
        ["demo", "--seeds", "0"],
        ["demo", "--grid", "0.1", "nan"],
        ["demo", "--bogus"],
        ["range-test", "--num-iters", "1.5"],
        ["range-test", "--momentum", "2"],
        ["range-test", "--sweep", "cosine"],
        ["reproduce-cifar10"],  # --data-root is required
        ["reproduce-cifar10", "--data-root", ".", "--iters-scale", "-0.5"],
        ["nonsense"],
        [],
    ],
)
def test_bad_arguments_give_one_line_and_exit_code_2(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    one_line_error(captured.err, rc)
    assert captured.out == ""


def test_user_errors_give_one_line_and_exit_code_2(tmp_path, capsys):
    rc = cli.main(["reproduce-cifar10", "--data-root", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    one_line_error(err, rc)
    assert "missing" in err
    os.makedirs(tmp_path / "empty")
    rc = cli.main(["reproduce-cifar10", "--data-root", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    one_line_error(err, rc)
    assert "data_batch_1" in err
    rc = cli.main(["range-test", "--start-lr", "0.5", "--end-lr", "0.1", "--out", str(tmp_path / "rt")])
    one_line_error(capsys.readouterr().err, rc)
    (tmp_path / "a_file").write_text("x")
    rc = cli.main(["range-test", "--num-iters", "3", "-q", "--out", str(tmp_path / "a_file" / "sub")])
    one_line_error(capsys.readouterr().err, rc)


def test_python_dash_m_exit_codes():
    """The real process: exit status and stderr as a user sees them."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(cli.__file__)), os.environ.get("PYTHONPATH", "")]),
    )
    ok = subprocess.run([sys.executable, "-m", "clr_ext", "--help"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "reproduce-cifar10" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "clr_ext", "demo", "--seeds", "-1"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "clr-ext demo: error: argument --seeds: expected a positive integer, got '-1' (see 'clr-ext demo --help')"
    ]


# ---------------------------------------------------------------------------- info
def test_info(capsys):
    import clr_ext

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"clr_ext {clr_ext.__version__}" in out
    assert f"torch {torch.__version__}" in out
    assert "backends: " + ", ".join(clr_ext.available_backends()) in out
    assert f"CPU capability: {torch.backends.cpu.get_cpu_capability()}" in out
    assert "CUDA: " + ("available" if torch.cuda.is_available() else "not available") in out


def test_info_names_each_missing_backend_why_and_how(monkeypatch, capsys):
    """An install whose build left the C++ backend out (the build's record says why) and
    which runs another torch than it was built against: info says so, and how to fix it."""
    import clr_ext

    monkeypatch.setattr(clr_ext, "available_backends", lambda: ["cython", "torch"])
    monkeypatch.setattr(
        cli,
        "build_info",
        lambda: {"torch": "0.0.1", "not_built": {"cpp": "no C++ compiler found ('g++' is not on PATH)"}},
    )
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends: cython, torch" in out
    assert "cpp: not built: no C++ compiler found ('g++' is not on PATH); needs a C++ compiler" in out
    assert "cuda: not available: " in out  # not in the record: the import's own reason
    assert f"built against torch 0.0.1 (this is torch {torch.__version__}: reinstall from source" in out
    assert "CLR_EXT_REQUIRE_COMPILED=1" in out


def test_info_reads_the_build_record_of_this_checkout():
    """The build writes clr_ext/_build_info.json (setup.py); where it exists, it names the
    torch this checkout was built against."""
    info = cli.build_info()
    if not info:
        pytest.skip("this checkout was built before the build record existed")
    assert info["torch"] == torch.__version__
    assert set(info["not_built"]) <= {"cpp", "cython", "cuda"}


def test_a_missing_demo_dependency_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    # As if scikit-learn were not installed: an import of it raises ModuleNotFoundError.
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")] + ["sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)
    rc = cli.main(["range-test", "--quiet", "--num-iters", "5", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (
        "clr-ext range-test: error: clr-ext range-test needs scikit-learn, which is not installed: "
        'pip install "clr_ext[demo]"\n'
    )


def test_missing_extra_leaves_other_import_errors_alone():
    from clr_ext._extras import missing_extra

    other = ModuleNotFoundError("No module named 'nonexistent_xyz'", name="nonexistent_xyz")
    assert missing_extra(other, "x") is other
    plot = missing_extra(ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"), "plot()")
    assert str(plot) == 'plot() needs matplotlib, which is not installed: pip install "clr_ext[plot]"'


# ---------------------------------------------------------------------------- demo
def test_demo_quick_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    rc = cli.main(["demo", "--quick", "--quiet", "--out", str(out_dir)])
    assert rc == 0
    stdout = capsys.readouterr().out
    for name in ("range_test.png", "lr_schedule.png", "accuracy.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG, name
    results = json.loads((out_dir / "results.json").read_text())

    # The table: the paper's Table 1 columns, one row per policy, and the grid's cost.
    header = next(line for line in stdout.splitlines() if line.startswith("policy"))
    for col in ("LR", "runs needed", "iterations in all", "iterations to", "final test accuracy"):
        assert col in header
    assert "fixed (best of grid)" in stdout and "3 (grid)" in stdout
    for name in DEMO_POLICIES:
        assert any(line.startswith(name + " ") for line in stdout.splitlines()), name
    assert "fixed-LR grid (3 runs per seed" in stdout
    assert "Highest mean final accuracy" in stdout

    # results.json: every policy over 3 seeds, the bounds from the range test, the table.
    assert results["config"]["seeds"] == 3
    rt = RangeTestResult.from_dict(results["range_test"])
    assert rt.base_lr == results["bounds"]["base_lr"] < results["bounds"]["max_lr"] == rt.max_lr
    assert rt.lrs[0] <= rt.base_lr and rt.max_lr <= rt.lrs[-1]
    policies = results["policies"]
    assert set(DEMO_POLICIES) <= set(policies)
    assert sum(name.endswith("(grid)") for name in policies) == 3
    iterations = results["bounds"]["iterations"]
    for name, p in policies.items():
        assert len(p["final_accuracy"]) == 3 and all(0.0 <= a <= 1.0 for a in p["final_accuracy"])
        assert p["eval_iters"][-1] == iterations  # same budget for every policy
        assert p["final_mean"] == pytest.approx(sum(p["final_accuracy"]) / 3)
    best = results["best_fixed"]
    assert results["target_accuracy"] == max(p["final_mean"] for n, p in policies.items() if n.endswith("(grid)"))
    assert policies[best]["final_mean"] == results["target_accuracy"]
    # The CNN learns: even this short run is far above chance (10%) with the suggested bounds.
    assert policies["triangular"]["final_mean"] > 0.5
    assert len(results["table"]["rows"]) == 1 + len(DEMO_POLICIES)
    # The tuning cost: the grid's 3 runs, against the range test plus one run.
    assert policies[best]["iterations_in_all"] == 3 * iterations
    assert policies["triangular"]["iterations_in_all"] == len(rt.lrs) + iterations
    # AdamW's own range test: its bounds sit below SGD's, and its rows count its iterations.
    adamw_rt = RangeTestResult.from_dict(results["adamw_range_test"])
    adamw = results["adamw_bounds"]
    assert adamw_rt.base_lr == adamw["base_lr"] < adamw["max_lr"] == adamw_rt.max_lr < results["bounds"]["max_lr"]
    assert policies["1cycle (AdamW)"]["iterations_in_all"] == len(adamw_rt.lrs) + iterations
    assert policies["1cycle"]["final_mean"] > 0.5 and policies["1cycle (AdamW)"]["final_mean"] > 0.5


# ---------------------------------------------------------------------- range-test
def test_range_test_command(tmp_path, capsys):
    out_dir = tmp_path / "rt"
    options = "--sweep exp --start-lr 1e-4 --end-lr 2 --num-iters 60 --quiet".split()
    rc = cli.main(["range-test", *options, "--out", str(out_dir)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert (out_dir / "range_test.png").read_bytes()[:8] == PNG
    result = RangeTestResult.load(out_dir / "range_test.json")
    assert result.sweep == "exp" and result.lrs[0] == 1e-4 and result.measured_on == "val"
    assert f"base_lr = {result.base_lr:.4g}" in stdout and f"max_lr = {result.max_lr:.4g}" in stdout
    assert "suggested stepsize" in stdout


# ---------------------------------------------------------------- reproduce-cifar10
def test_reproduce_cifar10_on_tiny_fake_data(tmp_path, capsys):
    data = tmp_path / "cifar-10-batches-py"
    write_fake_cifar10(str(data))
    out_dir = tmp_path / "out"
    options = "--iters-scale 0.0002 --batch-size 10 --device cpu --threads 1".split()
    rc = cli.main(["reproduce-cifar10", "--data-root", str(tmp_path), *options, "--out", str(out_dir)])
    assert rc == 0
    stdout = capsys.readouterr().out
    # The paper's Table 1 beside the measured one.
    for policy, iters, acc in (
        ("fixed", "70,000", "81.4"),
        ("triangular2", "25,000", "81.4"),
        ("decay", "25,000", "78.5"),
        ("exp", "70,000", "79.1"),
        ("exp_range", "42,000", "82.2"),
    ):
        row = next(line for line in stdout.splitlines() if line.startswith(policy + " "))
        assert iters in row and row.rstrip().endswith(acc)
    assert "paper: acc." in stdout
    assert (out_dir / "cifar10_accuracy.png").read_bytes()[:8] == PNG
    results = json.loads((out_dir / "cifar10_results.json").read_text())
    runs = results["policies"]
    # Iteration counts are the paper's, scaled: 70,000 * 0.0002 = 14, 25,000 * 0.0002 = 5.
    assert runs["fixed"]["iterations"] == 14 and runs["triangular2"]["iterations"] == 5
    assert runs["exp_range"]["iterations"] == 8
    # Caffe's multistep baseline: 0.001, then tenfold drops after 60,000 and 65,000 (scaled: 12, 13).
    lrs = runs["fixed"]["lr_of_step"]
    assert lrs[:12] == [pytest.approx(1e-3)] * 12 and lrs[12] == pytest.approx(1e-4) and lrs[13] == pytest.approx(1e-5)
    assert all(np.isfinite(r["last_loss"]) for r in runs.values())

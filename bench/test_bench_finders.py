"""The finders benchmark's harness on a small budget: rows for every clr_ext rule and the
README recipe, regret = best grid accuracy - the suggestion's, peers that are not installed
skipped (not failed), and the table rendered. The full run: ``python -m bench.finders``."""

import builtins
import dataclasses

import pytest
import torch

from bench import finders


@pytest.fixture
def small_digits(monkeypatch):
    task = finders.digits_task()
    small = dataclasses.replace(task, epochs=1, grid=(0.01, 0.05, 0.2))
    monkeypatch.setitem(finders.TASKS, "digits", lambda: small)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield small
    torch.set_num_threads(threads)


def test_harness_rows_and_regret_without_peers(small_digits, monkeypatch):
    real_import = builtins.__import__

    def no_peers(name, *args, **kwargs):
        if name.split(".")[0] in ("torch_lr_finder", "fastai", "lightning"):
            raise ImportError(f"{name} hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peers)
    res = finders.run(["digits"], seeds=1, log=lambda s: None)
    t = res["tasks"]["digits"]
    assert set(t["grid"]) == set(small_digits.grid) and t["best"] == max(t["grid"].values())
    rows = t["rows"]
    assert {r["finder"] for r in rows} == {"clr_ext"}  # the peers were skipped
    for sweep in ("exp", "linear"):
        assert {r["rule"] for r in rows if r["sweep"] == sweep} == set(finders.RULES) | {"base_lr"}
    recipe = [r for r in rows if r["rule"] == "README recipe"]
    assert len(recipe) == 1 and all(base < top for base, top in recipe[0]["lrs"])
    for r in rows:
        assert r["regret"] == pytest.approx(t["best"] - r["acc"])
        assert 0.0 <= r["acc"] <= 100.0 and r["seconds"] > 0
    table = finders.table(res)
    assert table.count("| clr_ext |") == len(rows)


def test_training_a_diverging_lr_scores_chance(small_digits):
    assert finders.train(small_digits, 0, finders.fixed_lr(small_digits, 1e3)) == pytest.approx(10.0)


def test_adamw_defaults_compares_the_two_sweeps(small_digits, monkeypatch):
    monkeypatch.setattr(finders, "ADAMW_GRID", (1e-3, 1e-2))
    res = finders.adamw_defaults(1, log=lambda s: None)
    assert set(res["grid"]) == {1e-3, 1e-2}
    default, before = res["sweeps"].values()
    for base, top in default["bounds"]:
        assert 1e-7 <= base < top <= 1.0
    for base, top in before["bounds"]:
        assert 1e-5 <= base < top <= 1.0
    text = finders.adamw_table(res)
    assert "default: exp 1e-7..1" in text and "before: linear 1e-5..1" in text

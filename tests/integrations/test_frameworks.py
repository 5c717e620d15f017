"""CyclicSGD inside the real frameworks (issue 16): Lightning, the HF Trainer, accelerate.

Tiny models, a few dozen steps, CPU only, one torch thread (a tiny model gains nothing from
more, and a loaded machine loses much). Each test skips when its framework is not
installed; ``.ci/run`` installs them. Every comparison is with the pair the optimizer fuses,
``torch.optim.SGD`` + ``CyclicLR`` (OneCycleSGD: ``OneCycleLR``) in a plain loop, on the same
data and initial values, bit for bit (fp32; Lightning's bf16-mixed too), and the logged LR is
compared with the LR that pair applied.
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from support.frameworks import hf_arguments, lightning_trainer

import clr_ext

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BASE_LR, MAX_LR, STEP_UP = 0.01, 0.1, 3
TOTAL_STEPS = 16  # OneCycleSGD's: the longest run here
SGD_KW = {"momentum": 0.9, "weight_decay": 1e-4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cyclic(params, kind: str = "cyclic"):
    if kind == "one_cycle":
        return clr_ext.OneCycleSGD(params, max_lr=MAX_LR, total_steps=TOTAL_STEPS, **SGD_KW)
    return clr_ext.CyclicSGD(params, base_lr=BASE_LR, max_lr=MAX_LR, step_size_up=STEP_UP, **SGD_KW)


def _pair(params, kind: str = "cyclic"):
    """The pair the optimizer fuses: torch.optim.SGD + CyclicLR (or OneCycleLR)."""
    sgd = torch.optim.SGD(params, lr=BASE_LR, **SGD_KW)
    if kind == "one_cycle":
        return sgd, torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=MAX_LR, total_steps=TOTAL_STEPS)
    return sgd, torch.optim.lr_scheduler.CyclicLR(sgd, base_lr=BASE_LR, max_lr=MAX_LR, step_size_up=STEP_UP)


def _assert_bitwise(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def _clr_warnings(record):
    return [str(w.message) for w in record if "clr_ext" in str(w.message) or "lr_scheduler.step()" in str(w.message)]


# ==================================================================== Lightning

N_SAMPLES, BATCH = 32, 4  # 8 batches per epoch


def _dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 8, generator=g)
    return torch.utils.data.TensorDataset(x, torch.tanh(x.sum(1, keepdim=True)))


def _loader():
    return torch.utils.data.DataLoader(_dataset(), batch_size=BATCH, shuffle=False)


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _reference_run(net, epochs: int, accumulate: int = 1, autocast: torch.dtype | None = None, kind="cyclic"):
    """The plain loop with torch.optim.SGD + CyclicLR; returns the LR each step applied."""
    sgd, sched = _pair(net.parameters(), kind)
    applied = []
    for _ in range(epochs):
        for i, (x, y) in enumerate(_loader()):
            if i % accumulate == 0:
                sgd.zero_grad()
            if autocast is None:
                loss = F.mse_loss(net(x), y)
            else:  # as Lightning's MixedPrecision: forward and loss under autocast, backward outside
                with torch.autocast("cpu", dtype=autocast, cache_enabled=False):
                    loss = F.mse_loss(net(x), y)
            (loss / accumulate).backward()
            if (i + 1) % accumulate == 0:
                applied.append(sched.get_last_lr()[0])
                sgd.step()
                sched.step()
    return applied


def _lightning_classes():
    pl = pytest.importorskip("lightning.pytorch")

    class Module(pl.LightningModule):
        def __init__(self, seed: int, form: str = "adapter", kind: str = "cyclic"):
            super().__init__()
            self.net = _mlp(seed)
            self.form = form
            self.kind = kind

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = _cyclic(self.parameters(), self.kind)
            if self.form == "plain":
                return opt
            return {"optimizer": opt, "lr_scheduler": {"scheduler": opt.as_scheduler(), "interval": "step"}}

    class MemoryLogger(pl.loggers.Logger):
        """Keeps what LearningRateMonitor logs: (step, {name: value})."""

        def __init__(self):
            super().__init__()
            self.logged = []

        @property
        def name(self):
            return "memory"

        @property
        def version(self):
            return 0

        def log_metrics(self, metrics, step=None):
            self.logged.append((step, dict(metrics)))

        def log_hyperparams(self, *args, **kwargs):
            pass

    return pl, Module, MemoryLogger


def _lightning_fit(module, epochs: int, ckpt_path=None, expected_warnings=(), **trainer_kwargs):
    pl, _, MemoryLogger = _lightning_classes()
    logger = MemoryLogger()
    trainer = lightning_trainer(
        pl,
        max_epochs=epochs,
        logger=logger,
        callbacks=[pl.callbacks.LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=_loader(), ckpt_path=ckpt_path)
    # no outside write, no scheduler-order warning (but those a test expects)
    assert [m for m in _clr_warnings(record) if not any(w in m for w in expected_warnings)] == []
    # The LR LearningRateMonitor logged for each optimizer step (several batches log the same
    # step under accumulation: they must agree).
    logged = {}
    for step, metrics in logger.logged:
        for name, value in metrics.items():
            if name.startswith("lr-"):
                assert logged.setdefault(step, value) == value
    return trainer, logged


@pytest.mark.parametrize(
    ("form", "precision", "kind"),
    [
        ("adapter", "32-true", "cyclic"),
        ("plain", "32-true", "cyclic"),
        ("adapter", "bf16-mixed", "cyclic"),
        ("plain", "bf16-mixed", "cyclic"),
        ("adapter", "32-true", "one_cycle"),
    ],
)
def test_lightning_trains_bitwise_like_sgd_cycliclr_and_logs_the_applied_lr(form, precision, kind):
    _, Module, _ = _lightning_classes()
    module = Module(0, form, kind)
    trainer, logged = _lightning_fit(module, epochs=2, precision=precision)
    ref = _mlp(0)
    applied = _reference_run(ref, epochs=2, autocast=torch.bfloat16 if precision == "bf16-mixed" else None, kind=kind)
    _assert_bitwise(module.net, ref)
    assert logged == dict(enumerate(applied))
    opt = trainer.optimizers[0]
    assert isinstance(opt, clr_ext.OneCycleSGD if kind == "one_cycle" else clr_ext.CyclicSGD)
    assert opt.iteration == len(applied) == 16
    if form == "adapter":
        assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr() == opt.get_last_lr()


def test_lightning_gradient_accumulation():
    _, Module, _ = _lightning_classes()
    module = Module(0)
    trainer, logged = _lightning_fit(module, epochs=2, accumulate_grad_batches=2)
    ref = _mlp(0)
    applied = _reference_run(ref, epochs=2, accumulate=2)
    _assert_bitwise(module.net, ref)
    assert logged == dict(enumerate(applied))
    assert trainer.optimizers[0].iteration == len(applied) == 8


def _assert_second_epoch_resumes_bit_for_bit(resumed, ckpt):
    """``resumed`` (other initial values: everything must come from the checkpoint) fitted
    from the end of epoch 1 in ``ckpt`` ends epoch 2 as the uninterrupted pair does, bit for
    bit, logging the pair's LRs."""
    trainer, logged = _lightning_fit(resumed, epochs=2, ckpt_path=ckpt)
    ref = _mlp(0)
    applied = _reference_run(ref, epochs=2)
    _assert_bitwise(resumed.net, ref)
    assert logged == {step: lr for step, lr in enumerate(applied) if step >= 8}
    assert trainer.optimizers[0].iteration == 16


@pytest.mark.parametrize("form", ["adapter", "plain"])
def test_lightning_checkpoint_resume_continues_bit_for_bit(form, tmp_path):
    _, Module, _ = _lightning_classes()
    first = Module(0, form)
    trainer, _ = _lightning_fit(first, epochs=1)
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)

    _assert_second_epoch_resumes_bit_for_bit(Module(1, form), ckpt)


def test_lightning_resumes_a_checkpoint_written_by_the_pytorch_pair(tmp_path):
    """A run switched from SGD + CyclicLR to CyclicSGD + as_scheduler() mid-training: the
    pair's checkpoint (optimizer state without a schedule position, CyclicLR's state with
    last_epoch) resumes where the pair stood, bit for bit."""
    _, Module, _ = _lightning_classes()

    class PairModule(Module):
        def configure_optimizers(self):
            sgd, sched = _pair(self.parameters())
            return {"optimizer": sgd, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    first = PairModule(0)
    trainer, _ = _lightning_fit(first, epochs=1)
    ckpt = tmp_path / "pair-epoch1.ckpt"
    trainer.save_checkpoint(ckpt)

    _assert_second_epoch_resumes_bit_for_bit(Module(1, "adapter"), ckpt)


def test_lightning_lr_find_on_a_scheduled_optimizer_warns(tmp_path):
    """Tuner.lr_find sweeps group["lr"] with its own scheduler: CyclicSGD keeps its cycle
    and says so (docs/guide/frameworks.md: use clr_ext.range_test and the bounds instead)."""
    pl, Module, _ = _lightning_classes()
    from lightning.pytorch.tuner import Tuner

    trainer = lightning_trainer(pl, max_epochs=1, logger=False, default_root_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        Tuner(trainer).lr_find(
            Module(0, "plain"), train_dataloaders=_loader(), min_lr=1e-4, max_lr=1.0, num_training=6, update_attr=False
        )
    messages = _clr_warnings(record)
    assert len(messages) == 1 and "param group 0's lr was set to" in messages[0]


def test_lightning_fp16_clipping_rule():
    """Lightning's fp16 (16-mixed) refuses gradient clipping for optimizers that unscale in
    their step, as CyclicSGD does (as torch's fused optimizers do); docs/guide/frameworks.md says: bf16, or
    no clipping. (16-mixed needs a GPU in a Trainer; its precision plugin shows the rule.)"""
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    opt = _cyclic(_mlp(0).parameters())
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        plugin.clip_gradients(opt, clip_val=1.0)
    plugin.clip_gradients(opt, clip_val=0.0)  # no clipping: fine


# ============================================================== the HF Trainer

N_TOKENS, SEQ = 32, 8


def _gpt2(seed: int):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(seed)
    no_dropout = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), 0.0)
    config = transformers.GPT2Config(vocab_size=N_TOKENS, n_positions=SEQ, n_embd=16, n_layer=1, n_head=2, **no_dropout)
    return transformers.GPT2LMHeadModel(config)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(0, N_TOKENS, (N_SAMPLES, SEQ), generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return N_SAMPLES

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _record_forward_calls(model):
    """The keyword arguments of every forward call the Trainer makes (batch, labels,
    num_items_in_batch), so that the plain loop replays exactly the same calls."""
    calls = []

    def hook(module, args, kwargs):
        calls.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def _hf_train(model, out, optimizers, max_steps=12, accumulation=1, resume=None, **kwargs):
    transformers = pytest.importorskip("transformers")
    args = hf_arguments(
        out, BATCH, gradient_accumulation_steps=accumulation, max_steps=max_steps, max_grad_norm=1.0, **kwargs
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), optimizers=optimizers)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=resume)
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    return trainer, logged, _clr_warnings(record)


def _hf_reference(model, calls, accumulation=1, kind="cyclic"):
    """The Trainer's step as a plain loop: the recorded forward calls, clipping to 1.0, SGD + CyclicLR."""
    sgd, sched = _pair(model.parameters(), kind)
    model.train()
    applied = []
    for i, call in enumerate(calls):
        model(**call).loss.backward()
        if (i + 1) % accumulation == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            applied.append(sched.get_last_lr()[0])
            sgd.step()
            sched.step()
            sgd.zero_grad()
    return applied


@pytest.mark.parametrize(("accumulation", "kind"), [(1, "cyclic"), (2, "cyclic"), (1, "one_cycle")])
def test_hf_trainer_with_the_adapter_logs_the_applied_lr_and_matches_sgd_cycliclr(accumulation, kind, tmp_path):
    model = _gpt2(0)
    ref = copy.deepcopy(model)
    calls = _record_forward_calls(model)
    opt = _cyclic(model.parameters(), kind)
    _, logged, clr = _hf_train(model, tmp_path, (opt, opt.as_scheduler()), accumulation=accumulation)
    assert clr == []
    applied = _hf_reference(ref, calls, accumulation, kind)
    assert len(applied) == 12 == opt.iteration
    _assert_bitwise(model, ref)
    assert logged == {step + 1: lr for step, lr in enumerate(applied)}  # the Trainer counts steps from 1


def test_hf_trainer_resume_mid_epoch_continues_exactly(tmp_path):
    model = _gpt2(0)
    opt = _cyclic(model.parameters())
    _, logged, _ = _hf_train(model, tmp_path / "a", (opt, opt.as_scheduler()), save_strategy="steps", save_steps=6)
    checkpoint = tmp_path / "a" / "checkpoint-6"  # step 6 of 8 in the first epoch
    assert (checkpoint / "scheduler.pt").exists()
    assert torch.load(checkpoint / "scheduler.pt", weights_only=True) == {"iteration": 6, "seen": 6, "_step_count": 7}

    resumed = _gpt2(1)  # other initial values: everything must come from the checkpoint
    opt2 = _cyclic(resumed.parameters())
    _, logged2, clr = _hf_train(resumed, tmp_path / "b", (opt2, opt2.as_scheduler()), resume=str(checkpoint))
    assert clr == []
    _assert_bitwise(resumed, model)
    assert opt2.iteration == 12
    assert logged2 == logged  # (steps 1-6 from the checkpoint's trainer_state.json, 7-12 logged anew)
    assert sorted(logged2) == list(range(1, 13))


def test_hf_trainer_resumes_a_checkpoint_written_by_the_pytorch_pair(tmp_path):
    """The pair (SGD + CyclicLR) trains and saves at step 6; CyclicSGD + as_scheduler()
    resumes that checkpoint: the scheduler's last_epoch gives the position, and the run
    ends exactly where the pair's own run ends."""
    model = _gpt2(0)
    sgd, sched = _pair(model.parameters())
    _, logged, _ = _hf_train(model, tmp_path / "a", (sgd, sched), save_strategy="steps", save_steps=6)
    checkpoint = tmp_path / "a" / "checkpoint-6"

    resumed = _gpt2(1)  # other initial values: everything must come from the checkpoint
    opt = _cyclic(resumed.parameters())
    _, logged2, clr = _hf_train(resumed, tmp_path / "b", (opt, opt.as_scheduler()), resume=str(checkpoint))
    assert clr == []
    assert opt.iteration == 12
    _assert_bitwise(resumed, model)
    assert logged2 == logged


def test_hf_trainer_without_the_adapter_warns_and_the_schedule_still_wins(tmp_path):
    """``optimizers=(opt, None)``: the Trainer builds its own (linear) scheduler, which writes
    group["lr"]. The optimizer warns once, keeps its own schedule, and trains as SGD +
    CyclicLR; only the Trainer's log is wrong (it shows its own scheduler's LR)."""
    model = _gpt2(0)
    ref = copy.deepcopy(model)
    calls = _record_forward_calls(model)
    opt = _cyclic(model.parameters())
    _, logged, clr = _hf_train(model, tmp_path, (opt, None), max_steps=6)
    assert len(clr) == 1 and "param group 0's lr was set to" in clr[0] and "as_scheduler" in clr[0]
    applied = _hf_reference(ref, calls)
    _assert_bitwise(model, ref)
    assert list(logged.values()) != applied  # what the warning is about


# =============================================================== accelerate


def test_accelerate_prepare_accumulate_save_and_load_state(tmp_path):
    """accelerate's own loop: prepare() wraps the adapter in its AcceleratedScheduler, which
    steps it only on sync steps; save_state/load_state round-trip the optimizer and adapter."""
    accelerate = pytest.importorskip("accelerate")

    def run(net, epochs, state_in=None, state_out=None):
        accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
        opt = _cyclic(net.parameters())
        model, opt_p, sched, loader = accelerator.prepare(net, opt, opt.as_scheduler(), _loader())
        if state_in is not None:
            accelerator.load_state(state_in)
        for _ in range(epochs):
            for x, y in loader:
                with accelerator.accumulate(model):
                    accelerator.backward(F.mse_loss(model(x), y))
                    opt_p.step()
                    sched.step()
                    opt_p.zero_grad()
        if state_out is not None:
            accelerator.save_state(state_out)
        return opt

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        net = _mlp(0)
        opt = run(net, 1, state_out=str(tmp_path / "state"))
        assert opt.iteration == 4
        resumed = _mlp(1)
        opt2 = run(resumed, 1, state_in=str(tmp_path / "state"))
    assert _clr_warnings(record) == []
    ref = _mlp(0)
    _reference_run(ref, epochs=2, accumulate=2)
    assert opt2.iteration == 8
    _assert_bitwise(resumed, ref)  # (accelerate restored the checkpoint into `resumed`)


# ============================== clipping under Lightning's mixed precision (issue 24)

CLIP_CLASSES = ("CyclicSGD", "OneCycleSGD", "CyclicAdamW", "OneCycleAdamW")


def _clr_optimizer(name: str, params):
    if name in ("CyclicSGD", "OneCycleSGD"):
        return _cyclic(params, "cyclic" if name == "CyclicSGD" else "one_cycle")
    if name == "CyclicAdamW":
        return clr_ext.CyclicAdamW(params, BASE_LR, MAX_LR, step_size_up=STEP_UP)
    return clr_ext.OneCycleAdamW(params, MAX_LR, total_steps=TOTAL_STEPS)


def _torch_pair(name: str, params):
    """The PyTorch pair ``name`` fuses (api.md): SGD or AdamW + CyclicLR or OneCycleLR."""
    if name in ("CyclicSGD", "OneCycleSGD"):
        return _pair(params, "cyclic" if name == "CyclicSGD" else "one_cycle")
    adamw = torch.optim.AdamW(params, lr=BASE_LR)
    if name == "CyclicAdamW":
        return adamw, torch.optim.lr_scheduler.CyclicLR(adamw, BASE_LR, MAX_LR, step_size_up=STEP_UP)
    return adamw, torch.optim.lr_scheduler.OneCycleLR(adamw, max_lr=MAX_LR, total_steps=TOTAL_STEPS)


def _reference_run_clipped(net, name: str, epochs: int, clip_val: float, algorithm: str):
    """The plain loop of Lightning's bf16-mixed with clipping: forward and loss under
    autocast, backward outside, then clip_grad_norm_ (or clip_grad_value_), step, schedule.
    Returns the LR each step applied and whether the clipping changed any gradient."""
    opt, sched = _torch_pair(name, net.parameters())
    applied, clipped = [], False
    for _ in range(epochs):
        for x, y in _loader():
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                loss = F.mse_loss(net(x), y)
            loss.backward()
            if algorithm == "norm":
                clipped |= bool(torch.nn.utils.clip_grad_norm_(net.parameters(), clip_val) > clip_val)
            else:
                clipped |= any(bool(p.grad.abs().max() > clip_val) for p in net.parameters())
                torch.nn.utils.clip_grad_value_(net.parameters(), clip_val)
            applied.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
    return applied, clipped


def _lightning_module_for(name: str, mixin: bool):
    _, Module, _ = _lightning_classes()
    from clr_ext.integrations.lightning import GradientClippingMixin

    class WithOptimizer(Module):
        def configure_optimizers(self):
            opt = _clr_optimizer(name, self.parameters())
            return {"optimizer": opt, "lr_scheduler": {"scheduler": opt.as_scheduler(), "interval": "step"}}

    if mixin:
        return type("Clipped", (GradientClippingMixin, WithOptimizer), {})
    return WithOptimizer


@pytest.mark.parametrize("name", CLIP_CLASSES)
def test_lightning_bf16_mixed_refuses_clipping_without_the_hook(name):
    """Lightning's rule, which the README's old advice missed: bf16-mixed (no scaler) refuses
    gradient_clip_val too, for every class (it checks _step_supports_amp_scaling)."""
    module = _lightning_module_for(name, mixin=False)(0)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        _lightning_fit(module, epochs=1, precision="bf16-mixed", gradient_clip_val=1.0)


@pytest.mark.parametrize(
    ("name", "algorithm", "clip_val"),
    [
        ("CyclicSGD", "norm", 0.05),
        ("CyclicSGD", "value", 0.02),
        ("OneCycleSGD", "norm", 0.05),
        ("CyclicAdamW", "norm", 0.05),
        ("OneCycleAdamW", "norm", 0.05),
    ],
)
def test_lightning_bf16_mixed_clipping_with_the_mixin_matches_the_pair_bit_for_bit(name, algorithm, clip_val):
    module = _lightning_module_for(name, mixin=True)(0)
    trainer, logged = _lightning_fit(
        module, epochs=2, precision="bf16-mixed", gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm
    )
    ref = _mlp(0)
    applied, clipped = _reference_run_clipped(ref, name, epochs=2, clip_val=clip_val, algorithm=algorithm)
    assert clipped  # the clipping bound is tight enough to change the gradients
    _assert_bitwise(module.net, ref)
    assert logged == dict(enumerate(applied))
    assert trainer.optimizers[0].iteration == 16


def test_lightning_clipping_mixin_leaves_other_optimizers_to_lightning():
    """A torch.optim.SGD under the mixin is clipped by Lightning's own code: same numbers as
    the plain loop with clip_grad_norm_."""
    _, Module, _ = _lightning_classes()
    from clr_ext.integrations.lightning import GradientClippingMixin

    class PlainSGD(GradientClippingMixin, Module):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=BASE_LR, **SGD_KW)

    module = PlainSGD(0)
    _lightning_fit(module, epochs=1, precision="bf16-mixed", gradient_clip_val=0.05)
    ref = _mlp(0)
    sgd = torch.optim.SGD(ref.parameters(), lr=BASE_LR, **SGD_KW)
    for x, y in _loader():
        sgd.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            loss = F.mse_loss(ref(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        sgd.step()
    _assert_bitwise(module.net, ref)


@pytest.mark.parametrize("name", ["CyclicSGD", "CyclicAdamW"])
def test_lightning_16_mixed_clipping_with_the_mixin_unscales_first_like_the_plain_amp_loop(name):
    """16-mixed with a grad scaler (on the CPU Lightning would switch to bf16, so the plugin is
    given): the mixin unscales with the Trainer's scaler before clipping, as the plain AMP
    loop does (scaler.unscale_, clip, scaler.step, scaler.update), with the same numbers."""
    pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.plugins.precision import MixedPrecision

    module = _lightning_module_for(name, mixin=True)(0)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer, logged = _lightning_fit(module, epochs=1, plugins=[plugin], gradient_clip_val=0.05)
    ref = _mlp(0)
    opt, sched = _torch_pair(name, ref.parameters())
    scaler = torch.amp.GradScaler("cpu")
    applied, clipped = [], False
    for x, y in _loader():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, cache_enabled=False):
            loss = F.mse_loss(ref(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        clipped |= bool(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05) > 0.05)
        applied.append(sched.get_last_lr()[0])
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert clipped
    _assert_bitwise(module.net, ref)
    assert logged == dict(enumerate(applied))
    assert trainer.optimizers[0].iteration == 8


# ================================ the HF Trainer building the optimizer itself (issue 24)


def test_hf_trainer_optimizer_cls_and_kwargs_with_the_mixin_takes_the_optimizers_schedule(tmp_path):
    """optimizer_cls_and_kwargs=(CyclicSGD, {...}) + OptimizerScheduleMixin: the Trainer steps
    and logs the optimizer's own schedule (no warning), as SGD + CyclicLR with clipping."""
    transformers = pytest.importorskip("transformers")
    from clr_ext.integrations.transformers import OptimizerScheduleMixin

    class CLRTrainer(OptimizerScheduleMixin, transformers.Trainer):
        pass

    model = _gpt2(0)
    ref = copy.deepcopy(model)
    calls = _record_forward_calls(model)
    kwargs = {"base_lr": BASE_LR, "max_lr": MAX_LR, "step_size_up": STEP_UP, "momentum": 0.9}
    args = hf_arguments(tmp_path, BATCH, max_steps=12, max_grad_norm=1.0)
    trainer = CLRTrainer(
        model=model, args=args, train_dataset=_Tokens(), optimizer_cls_and_kwargs=(clr_ext.CyclicSGD, kwargs)
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.train()
    assert _clr_warnings(record) == []
    assert isinstance(trainer.optimizer.optimizer, clr_ext.CyclicSGD)  # (accelerate wraps it)
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}

    # The Trainer's groups: weight_decay = args.weight_decay (0.0 here) for every parameter.
    sgd = torch.optim.SGD(ref.parameters(), lr=BASE_LR, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(sgd, base_lr=BASE_LR, max_lr=MAX_LR, step_size_up=STEP_UP)
    ref.train()
    applied = []
    for call in calls:
        ref(**call).loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        applied.append(sched.get_last_lr()[0])
        sgd.step()
        sched.step()
        sgd.zero_grad()
    assert len(applied) == 12 == trainer.optimizer.optimizer.iteration
    _assert_bitwise(model, ref)
    assert logged == {step + 1: lr for step, lr in enumerate(applied)}

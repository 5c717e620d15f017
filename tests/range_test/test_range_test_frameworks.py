"""The range test inside the frameworks: the Lightning callback (in the place of Lightning's
LearningRateFinder) and the Hugging Face Trainer recipe. Each test skips when its framework
is missing; .ci/run installs lightning 2.6.6, transformers 5.24.0 and accelerate 1.15.0.

What is checked: the test ran on the trainer's model and training batches, the model is
exactly as before it, the optimizer the run used was built from the result, and the run of
the trainer's length ended at the end of a cycle (LR back at base_lr, as the oracle
clr_ext.cyclic_lr says) having passed max_lr."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from support.frameworks import hf_arguments, lightning_trainer

import clr_ext

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

N_SAMPLES, BATCH = 48, 4  # 12 batches per epoch


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 8, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, :3].sum(1) > 0).long())


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ==================================================================== Lightning
def _lightning_module(cls_name="CyclicSGD", log_calls=None):
    pl = pytest.importorskip("lightning.pytorch")
    from clr_ext.range_test.lightning import configure_cyclic

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
            self.seen_in_test = 0

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)  # muted during the range test, live in fit
            if log_calls is not None:
                log_calls.append(self.trainer.state.stage)
            return {"loss": loss}

        def configure_optimizers(self):
            kwargs = {"momentum": 0.9} if cls_name.endswith("SGD") else {}
            return configure_cyclic(self, getattr(clr_ext, cls_name), **kwargs)

    return pl, Module


def _trainer(pl, callbacks, max_epochs, **kwargs):
    return lightning_trainer(
        pl, max_epochs=max_epochs, logger=False, callbacks=callbacks, num_sanity_val_steps=0, **kwargs
    )


class _StepRecorder:
    """The LR each optimizer step applied, read from the optimizer before the step."""

    def __init__(self):
        self.lrs = []

    def __call__(self, module):
        import lightning.pytorch as pl

        recorder = self

        class Hook(pl.Callback):
            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                recorder.lrs.append(optimizer.param_groups[0]["lr"])

        return Hook()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_callback_tests_then_the_run_ends_at_a_cycle_end(accumulate):
    pl, Module = _lightning_module()
    from clr_ext.range_test.lightning import RangeTest

    module = Module()
    initial = _state(module)
    seen = []
    module.net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    callback = RangeTest(start_lr=1e-4, end_lr=3.0, num_iters=40)
    recorder = _StepRecorder()
    trainer = _trainer(pl, [callback, recorder(module)], max_epochs=5, accumulate_grad_batches=accumulate)
    loader = torch.utils.data.DataLoader(_dataset(), batch_size=BATCH, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a tiny curve
        # The range test runs in setup, before configure_optimizers; check the model it left.
        orig_configure = module.configure_optimizers

        def configure_and_check():
            assert all(torch.equal(v, initial[k]) for k, v in module.state_dict().items())
            return orig_configure()

        module.configure_optimizers = configure_and_check
        trainer.fit(module, train_dataloaders=loader)
    result = module.range_test_result
    assert result is callback.result and len(result.lrs) >= 2
    assert result.lrs[0] == 1e-4 and result.sweep == "linear"
    # It trained on the trainer's batches: accumulate batches per step, 4 samples each.
    assert seen[: accumulate * len(result.lrs)] == [BATCH] * (accumulate * len(result.lrs))
    opt = trainer.optimizers[0]
    assert isinstance(opt, clr_ext.CyclicSGD)
    assert opt.param_groups[0]["base_lr"] == result.base_lr and opt.param_groups[0]["max_lr"] == result.max_lr
    total = 5 * 12 // accumulate
    assert trainer.global_step == total == len(recorder.lrs) == opt.iteration
    up, down = opt.step_size_up, opt.step_size_down
    assert total % (up + down) == 0
    assert recorder.lrs[0] == result.base_lr and max(recorder.lrs) == pytest.approx(result.max_lr)
    assert clr_ext.cyclic_lr(total, result.base_lr, result.max_lr, up, down) == result.base_lr
    assert opt.get_last_lr()[0] == pytest.approx(result.base_lr, rel=1e-12)


def test_lightning_callback_with_adamw_and_one_cycle():
    pl, Module = _lightning_module("OneCycleAdamW")
    from clr_ext.range_test.lightning import RangeTest

    module = Module()
    trainer = _trainer(pl, [RangeTest(optimizer="adamw", num_iters=30)], max_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_dataset(), batch_size=BATCH))
    result = module.range_test_result
    assert (result.sweep, result.start_lr, result.end_lr) == ("exp", 1e-7, 1.0)  # AdamW's own sweep
    opt = trainer.optimizers[0]
    assert isinstance(opt, clr_ext.OneCycleAdamW) and opt.total_steps == 24 == trainer.global_step
    assert opt.param_groups[0]["max_lr"] == result.max_lr


def test_lightning_resume_reads_the_saved_result_instead_of_testing_again(tmp_path):
    pl, Module = _lightning_module()
    from clr_ext.range_test.lightning import RangeTest

    loader = torch.utils.data.DataLoader(_dataset(), batch_size=BATCH)
    module = Module()
    trainer = _trainer(pl, [RangeTest(num_iters=30)], max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.fit(module, train_dataloaders=loader)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    first = module.range_test_result

    calls = []
    resumed = Module()
    callback = RangeTest(num_iters=30, step_fn=lambda m, b: calls.append(1) or F.cross_entropy(m.net(b[0]), b[1]))
    trainer = _trainer(pl, [callback], max_epochs=2)
    trainer.fit(resumed, train_dataloaders=loader, ckpt_path=tmp_path / "a.ckpt")
    assert calls == []  # no second test
    assert resumed.range_test_result.to_dict() == first.to_dict()
    assert trainer.optimizers[0].param_groups[0]["max_lr"] == first.max_lr


def test_lightning_callback_reads_validation_accuracy_with_a_loss_fn():
    pl, Module = _lightning_module()
    from clr_ext.range_test.lightning import RangeTest

    class WithForward(Module):
        def forward(self, x):
            return self.net(x)

    module = WithForward()
    val = torch.utils.data.DataLoader(_dataset(), batch_size=16)
    callback = RangeTest(loss_fn=F.cross_entropy, metric="accuracy", val_loader=val, num_iters=25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _trainer(pl, [callback], max_epochs=1).fit(
            module, train_dataloaders=torch.utils.data.DataLoader(_dataset(), batch_size=BATCH)
        )
    result = module.range_test_result
    assert result.reading == "metric" and result.measured_on == "val" and len(result.metrics) == len(result.lrs)


def test_lightning_configure_cyclic_without_the_callback_says_what_is_missing():
    pl, Module = _lightning_module()
    trainer = _trainer(pl, [], max_epochs=1)
    with pytest.raises(ValueError, match="RangeTest"):
        trainer.fit(Module(), train_dataloaders=torch.utils.data.DataLoader(_dataset(), batch_size=BATCH))


# ===================================================================== HF Trainer
def _hf_model():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    class Config(transformers.PretrainedConfig):
        model_type = "clr_ext_tiny"

    class Tiny(transformers.PreTrainedModel):
        config_class = Config

        def __init__(self, config):
            super().__init__(config)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

        def forward(self, features, labels=None, **kwargs):
            logits = self.net(features)
            loss = None if labels is None else F.cross_entropy(logits, labels)
            return transformers.modeling_outputs.SequenceClassifierOutput(loss=loss, logits=logits)

    torch.manual_seed(0)
    return transformers, Tiny(Config())


class _Features(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.y = _dataset().tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"features": self.x[i], "labels": self.y[i]}


@pytest.mark.parametrize(("cls_name", "accumulation"), [("CyclicAdamW", 1), ("CyclicSGD", 2), ("OneCycleAdamW", 1)])
def test_hf_trainer_recipe(cls_name, accumulation, tmp_path):
    transformers, model = _hf_model()
    from clr_ext.range_test.hf import use_range_test

    args = hf_arguments(tmp_path, BATCH, gradient_accumulation_steps=accumulation, num_train_epochs=4)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Features())
    initial = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cls = getattr(clr_ext, cls_name)
        kwargs = {} if cls_name == "CyclicSGD" else {"optimizer_kwargs": {"weight_decay": 0.0}}
        result = use_range_test(trainer, cls, num_iters=30, **kwargs)
    assert all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())
    assert result.sweep == ("linear" if cls_name == "CyclicSGD" else "exp")
    opt = trainer.optimizer
    assert isinstance(opt, cls) and opt.param_groups[0]["max_lr"] == result.max_lr
    trainer.train()
    total = 4 * 12 // accumulation
    assert trainer.optimizer is opt or getattr(trainer.optimizer, "optimizer", None) is opt
    assert trainer.state.global_step == total == opt.iteration
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert len(logged) == total
    if cls_name == "OneCycleAdamW":  # its peak falls between two steps
        assert opt.total_steps == total and 0.99 * result.max_lr <= max(logged) <= result.max_lr
    else:
        up, down = opt.step_size_up, opt.step_size_down
        assert max(logged) == pytest.approx(result.max_lr)
        assert total % (up + down) == 0 and logged[0] == result.base_lr
        assert opt.get_last_lr()[0] == pytest.approx(result.base_lr, rel=1e-12)

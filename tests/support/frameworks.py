"""The Lightning trainer and the Hugging Face TrainingArguments the framework tests run with
(integrations/test_frameworks.py, range_test/test_range_test_frameworks.py): the CPU, one
process, no progress bars, summaries, reports or dataloader workers."""

from __future__ import annotations

import pytest


def lightning_trainer(pl, **kwargs):
    """``pl.Trainer`` on one CPU device; checkpoints only where ``kwargs`` asks for them."""
    quiet = dict(
        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
    )
    return pl.Trainer(**{**quiet, **kwargs})


def hf_arguments(out, batch, **kwargs):
    """``transformers.TrainingArguments`` on the CPU, seed 0, the LR logged at every step,
    nothing saved unless ``kwargs`` says so."""
    transformers = pytest.importorskip("transformers")
    kwargs.setdefault("save_strategy", "no")
    return transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **kwargs,
    )

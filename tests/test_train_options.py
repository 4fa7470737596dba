"""The training loop's optional AdamW and linear warm-up (used by benchmarks/train_cifar_zoo.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikecast.train.loop import TrainConfig, cosine_lr, scheduled_lr, train


def test_defaults_keep_the_old_repr_and_schedule():
    # fine-tuning fingerprints are built from repr(config): the new options must not show at their defaults
    assert "optimizer" not in repr(TrainConfig()) and "warmup" not in repr(TrainConfig())
    assert "optimizer='adamw'" in repr(TrainConfig(optimizer="adamw"))
    assert all(scheduled_lr(0.1, s, 50) == cosine_lr(0.1, s, 50) for s in range(51))
    assert [scheduled_lr(1.0, s, 10, warmup=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert scheduled_lr(1.0, 4, 10, warmup=4) == 1.0 and scheduled_lr(1.0, 10, 10, warmup=4) == 0.0
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup_epochs=-1)


def test_adamw_with_warmup_trains():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 2))
    lrs = []

    def step(xb, yb):
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=0.1)
        loss.backward()
        return float(loss.detach()), logits.detach()

    config = TrainConfig(epochs=6, lr=0.02, weight_decay=0.05, batch_size=32, optimizer="adamw", warmup_epochs=1)
    optimizer_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return optimizer_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        history = train(model, list(model.parameters()), step, (x, y), config, fingerprint={}, progress=False)
    assert len(lrs) == 6 * 8 and lrs[:8] == [0.02 * (i + 1) / 8 for i in range(8)]
    assert lrs[8:] == sorted(lrs[8:], reverse=True)
    assert history.epochs[-1]["train_accuracy"] > 0.9

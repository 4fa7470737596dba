"""Labelled fine-tuning: QCFS on the ANN, surrogate-gradient BPTT on the SNN (one loop, resumable)."""

from spikecast.train.finetune import FinetuneConfig, finetune
from spikecast.train.loop import TrainConfig, TrainHistory

__all__ = ["finetune", "FinetuneConfig", "TrainConfig", "TrainHistory"]

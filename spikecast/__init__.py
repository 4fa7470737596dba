"""spikecast: convert pretrained PyTorch / timm networks into spiking neural networks.

    import spikecast
    snn = spikecast.convert(model, calib=data, timesteps=32)  # trace, normalise, calibrate for T=32, convert
    snn = spikecast.convert(model, data, spikecast.Recipe(timesteps=8, levels=2))  # one recipe object
    res = spikecast.validate(model, snn, data, timesteps=[1, 2, 4, 8, 16, 32, 64, 128])
    snn.simulate(x, timesteps=[8, 32])                   # mean outputs after 8 and 32 steps, one run
    snn.save("snn/"); snn2 = spikecast.load("snn/")
    snn4 = spikecast.finetune("zoo:cifar10-resnet20", (x, y))  # QCFS fine-tune for T=4 (resumable)
    snn8bit = spikecast.quantize_weights(snn4, bits=8)
    spikecast.report(spikecast.build_report(model, snn, data), "report/")  # JSON, Markdown, HTML + plots
    snn = spikecast.convert(model, data, profile="nir"); spikecast.to_nir(snn, "snn.nir")  # NIR, exactly
    snn = spikecast.from_nir("other.nir")                # a NIR graph written by another tool
"""

from pathlib import Path
from typing import Union

import torch

from spikecast.pipeline import convert
from spikecast.recipe import Recipe, recipe_of
from spikecast.nn.neuron import IFNeuron
from spikecast.inspection import InspectionReport, inspect
from spikecast.errors import CalibrationError, SpikecastError, TraceError, UnsupportedOperationError
from spikecast.runtime.network import SimulationConfig, SpikingNetwork
from spikecast.validate import ValidationResult, validate
from spikecast.train import FinetuneConfig, TrainConfig, finetune
from spikecast.quant import quantize_weights
from spikecast.export.nir import from_nir, to_nir
from spikecast.reporting import Report, build_report, write_report

from spikecast import data, zoo  # noqa: E402  (spikecast.zoo.create_model works after `import spikecast`)

__version__ = "0.1.0"


def report(result: Union[Report, ValidationResult], out_dir: Union[str, Path]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and PNG plots of ``result`` (a
    :class:`Report` from :func:`build_report`, or a :class:`ValidationResult`) into ``out_dir``."""
    return write_report(result, out_dir)


def load(path: Union[str, Path], device: Union[str, torch.device, None] = None) -> SpikingNetwork:
    """Load a network saved with ``SpikingNetwork.save`` (its directory) onto ``device`` (default: the CPU)."""
    return SpikingNetwork.load(path, device=device)


__all__ = [
    "convert", "Recipe", "recipe_of", "validate", "load", "inspect", "finetune", "FinetuneConfig", "TrainConfig", "quantize_weights",
    "to_nir", "from_nir", "report", "build_report", "Report", "SpikingNetwork", "SimulationConfig", "IFNeuron",
    "ValidationResult", "InspectionReport", "SpikecastError", "TraceError", "UnsupportedOperationError", "CalibrationError",
    "__version__",
]

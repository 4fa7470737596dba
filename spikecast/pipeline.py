"""``spikecast.convert``: ANN -> traced -> normalised -> calibrated -> spiking network, one call."""

from __future__ import annotations

import time
from dataclasses import replace
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.fx as fx

from spikecast.convert.correction import CorrectionConfig, correct_graph
from spikecast.calibrate.statistics import iterate_inputs
from spikecast.calibrate.thresholds import DEFAULT_PERCENTILE, CalibrationConfig, calibrate
from spikecast.convert.spiking import NeuronConfig, to_spiking
from spikecast.errors import CalibrationError
from spikecast.graph.normalize import normalize
from spikecast.graph.trace import trace
from spikecast.models import ModelLike, resolve_model
from spikecast.runtime.network import SimulationConfig, SpikingNetwork


# The default recipe: the winner of the calibration ablation in benchmarks/RESULTS.md.
DEFAULT_METHOD = "mse"
DEFAULT_CALIBRATION = "advanced"
DEFAULT_SIGNED = True
DEFAULT_TIMESTEPS = 32


def correct(snn: SpikingNetwork, ann_graph: fx.GraphModule, data, config: CorrectionConfig = CorrectionConfig(), *,
            progress: bool = True, device=None) -> SpikingNetwork:
    """Return a copy of ``snn`` corrected layer by layer with the ANN as teacher (``snn`` is
    untouched); see :mod:`spikecast.convert.correction`. ``metadata["correction"]`` records what ran."""
    graph, record = correct_graph(snn.graph_module, ann_graph, data, snn.config, config, progress=progress,
                                  device=device)
    metadata = dict(snn.metadata)
    if record is not None:
        metadata["correction"] = record
    return SpikingNetwork(graph, snn.config, metadata)


def first_batch(data) -> torch.Tensor:
    for x in iterate_inputs(data):
        return x
    raise CalibrationError("the calibration data is empty: it yielded no batch")


def prepare(model: torch.nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Trace and normalise ``model`` (stages 1-2), returning the normalised ANN graph."""
    return normalize(trace(model, example[:2]))


def convert(
    model: ModelLike,
    calib=None,
    *,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    per_channel: bool = False,
    calibration: str = DEFAULT_CALIBRATION,
    checkpoint: Optional[Union[str, Path]] = None,
    pretrained: Optional[bool] = None,
    timesteps: int = DEFAULT_TIMESTEPS,
    v_init: float = 0.5,
    mask_ratio: float = 0.0,
    mask_sites: Optional[Sequence[str]] = None,
    mask_seed: int = 0,
    signed: bool = DEFAULT_SIGNED,
    levels: int = 1,
    compensate: bool = True,
    encoding: str = "analog",
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
) -> SpikingNetwork:
    """Convert a network into a spiking network of integrate-and-fire neurons.

    ReLU-like activations become neurons; a weighted layer that reads the output of another
    non-linear op (GELU, SiLU, LayerNorm, attention, ...) reads a bipolar neuron, and those ops run
    with expectation compensation (see :mod:`spikecast.convert.compensation`).

    Args:
        model: an ``nn.Module``, ``"zoo:<name>"`` (e.g. ``"zoo:cifar10-resnet20"``) or a timm name.
        calib: unlabeled calibration data - a DataLoader yielding ``x`` or ``(x, y)``, an iterable
            of batches, or a tensor. Labels are ignored.
        method: threshold selection: ``"max"``, ``"percentile"`` or ``"mse"`` (minimum expected
            error for ``timesteps`` steps); see :mod:`spikecast.calibrate.thresholds`.
        percentile: percentile (0-100] of the positive activations used by ``"percentile"``.
        per_channel: one threshold per channel instead of one per activation site.
        calibration: post-conversion correction with the ANN as teacher, for ``timesteps``:
            ``"none"``, ``"light"`` (bias + potential correction) or ``"advanced"`` (+ per-channel
            threshold refinement); see :mod:`spikecast.convert.correction`.
        checkpoint: local weights file (.pth/.pt/.th/.safetensors) to load into the model.
        pretrained: load the model's default weights (zoo: default True; timm: False, needs
            internet when True).
        timesteps: the timestep budget the network is calibrated for, and the default number of
            steps of ``snn(x)``; ``simulate`` runs any budget.
        v_init: initial membrane potential as a fraction of the threshold (0.5 = half threshold).
        mask_ratio, mask_sites, mask_seed: random spike masking (see :class:`IFNeuron`).
        signed: neurons may send a negative spike to take back an earlier positive one (see
            :class:`IFNeuron`); fixes over-firing on transients at the cost of ternary spikes.
        levels: spikes a neuron may send per step (multi-threshold neurons): ``T`` steps resolve
            ``levels * T`` values, at ``log2(levels + 1)`` bits per step (reported).
        compensate: run non-linear ops inside the spiking part with expectation compensation;
            ``False`` raises :class:`UnsupportedOperationError` naming them instead.
        encoding: ``"analog"`` (direct input, default) or ``"poisson"`` (rate-coded input).
        device: where calibration runs and the SNN lives (default: CPU, or the model's device).
        progress: show progress bars.

    Returns:
        A :class:`SpikingNetwork`. Raises :class:`UnsupportedOperationError` naming each module
        path whose op cannot be converted; nothing is skipped silently.
    """
    if calib is None:
        raise CalibrationError("convert() needs calibration data (`calib=`): a DataLoader, batches or a tensor")
    started = time.perf_counter()
    ann, name = resolve_model(model, checkpoint, pretrained)
    # a neuron with `levels` spike sizes resolves levels*T values in T steps: choose its range for that
    calib_config = CalibrationConfig(method=method, percentile=percentile, per_channel=per_channel,
                                     timesteps=timesteps * int(levels), v_init=v_init)
    correction_config = CorrectionConfig(level=calibration, timesteps=timesteps)
    neuron_config = NeuronConfig(v_init=v_init, mask_ratio=mask_ratio,
                                 mask_sites=tuple(mask_sites) if mask_sites else None, mask_seed=mask_seed,
                                 signed=signed, levels=levels)
    sim_config = SimulationConfig(timesteps=timesteps, encoding=encoding)
    if device is None:
        device = next((p.device for p in ann.parameters()), torch.device("cpu"))
    example = first_batch(calib).to(device)
    normalised = prepare(ann, example)
    calibrated, stats = calibrate(normalised, calib, calib_config, progress=progress, device=device)
    if encoding == "poisson":
        sim_config = replace(sim_config, input_scale=max(float(x.abs().max()) for x in iterate_inputs(calib)))
    snn_graph = to_spiking(calibrated, neuron_config, input_varies=encoding != "analog", compensate=compensate)
    if not stats:
        warnings.warn(f"{name} has no activation site: the converted network has no spiking neuron "
                      "and computes the ANN exactly. Run `spikecast inspect` to see its ops.", stacklevel=2)
    n_images = sum(int(x.shape[0]) for x in iterate_inputs(calib))
    metadata = {
        "source": name,
        "calibration": {"method": method, "percentile": percentile if method == "percentile" else None,
                        "per_channel": per_channel, "level": calibration, "timesteps": timesteps,
                        "images": n_images},
        "neuron": {"v_init": v_init, "mask_ratio": mask_ratio, "mask_sites": list(mask_sites or []),
                   "mask_seed": mask_seed, "signed": signed, "levels": int(levels), "compensate": compensate},
        "sites": [stats[k].to_dict() for k in stats],
    }
    snn = SpikingNetwork(snn_graph, sim_config, metadata).to(device)
    if calibration != "none" and stats:
        snn = correct(snn, calibrated, calib, correction_config, progress=progress, device=device)
    snn.metadata["calibration"]["seconds"] = round(time.perf_counter() - started, 3)
    return snn

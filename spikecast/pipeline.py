"""``spikecast.convert``: ANN -> traced -> normalised -> calibrated -> spiking network, one call.

One recipe (:class:`spikecast.recipe.Recipe`), one calibration set (the data read once,
:mod:`spikecast.calibrate.sample`), one building function (:func:`build_snn`, also used by
fine-tuning) and one metadata schema (described in :mod:`spikecast.recipe`).
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
import torch.fx as fx

from spikecast.calibrate.sample import CalibrationSet, calibration_set
from spikecast.calibrate.statistics import SiteStatistics
from spikecast.calibrate.thresholds import calibrate
from spikecast.convert.correction import CorrectionConfig, correct_graph
from spikecast.convert.spiking import to_spiking
from spikecast.data import DataLike, input_channel_guard
from spikecast.devices import DeviceLike, device_of, resolve_device
from spikecast.errors import CalibrationError
from spikecast.export.nir import nir_form
from spikecast.graph.normalize import MaxpoolRewrite, normalize
from spikecast.graph.sites import site_nodes
from spikecast.graph.trace import trace
from spikecast.models import ModelLike, resolve_model
from spikecast.quant.reconstruct import distill, reconstruct
from spikecast.recipe import Recipe, build_recipe
from spikecast.runtime.network import SpikingNetwork

__all__ = ["convert", "build_snn", "correct", "prepare", "read_calibration_set", "Recipe"]

def correct(snn: SpikingNetwork, ann_graph: fx.GraphModule, data, config: CorrectionConfig = CorrectionConfig(), *,
            progress: bool = True, device=None) -> SpikingNetwork:
    """Return a copy of ``snn`` corrected layer by layer with the ANN as teacher (``snn`` is
    untouched); see :mod:`spikecast.convert.correction`. ``data``: the calibration set (or a tensor
    of images; any other source is read once into a set of the default size).
    ``metadata["correction"]`` records what ran."""
    graph, record = correct_graph(snn.graph_module, ann_graph, data, snn.config, config, progress=progress,
                                  device=device)
    metadata = dict(snn.metadata)
    if record is not None:
        metadata["correction"] = record
    return SpikingNetwork(graph, snn.config, metadata)


def prepare(model: torch.nn.Module, example: torch.Tensor, *, maxpool: MaxpoolRewrite = MaxpoolRewrite()
            ) -> fx.GraphModule:
    """Trace and normalise ``model`` (stages 1-2), returning the normalised ANN graph
    (``maxpool``: :attr:`Recipe.maxpool_rewrite`).

    Data with the wrong number of channels is refused with a one-line error naming expected and
    got (not torch's shape error from inside the trace)."""
    with input_channel_guard(model, "the calibration data"):
        return normalize(trace(model, example[:2]), maxpool=maxpool)


def build_snn(graph: fx.GraphModule, images: CalibrationSet, recipe: Recipe, *, source: str,
              calibrated: bool = False, stats: Optional[dict[str, SiteStatistics]] = None,
              device: Optional[torch.device] = None, progress: bool = True,
              started: Optional[float] = None) -> SpikingNetwork:
    """Normalised ANN graph + calibration set + recipe -> SNN with the one metadata schema.

    Stages: thresholds on every site (``recipe.calibration_config()``) unless ``calibrated`` (the
    graph's sites already have thresholds, e.g. fine-tuned QCFS clips; ``stats`` then are the
    statistics to record, if any), the label-free reconstruction when ``recipe.reconstructs``
    (not for a ``calibrated`` graph; recorded as ``metadata["reconstruction"]``; after the correction
    its distillation of the SNN, ``recipe.distill_steps``, recorded under ``"distill"``), neurons
    (``recipe.neuron_config()``), simulation settings
    (Poisson input scale from the calibration set), then the layer-wise correction
    (``recipe.correction_config()``) with ``graph`` (calibrated) as teacher. ``started``: a
    ``time.perf_counter()`` value to count ``metadata["seconds"]`` from (default: now).
    """
    started = time.perf_counter() if started is None else started
    if calibrated:
        thresholds = graph
        stats = stats or {}
    else:
        thresholds, stats = calibrate(graph, images, recipe.calibration_config(), progress=progress, device=device)
    reconstruction = None
    if recipe.reconstructs and not calibrated:  # a calibrated graph (fine-tuned clips) is already trained
        thresholds, reconstruction = reconstruct(graph, thresholds, images,
                                                 recipe.calibration_timesteps * int(recipe.levels),
                                                 recipe.reconstruction_config(), shift=recipe.v_init,
                                                 device=device, progress=progress)
    input_scale = images.input_scale() if recipe.encoding == "poisson" else 1.0
    snn_graph = to_spiking(thresholds, recipe.neuron_config(), input_varies=recipe.encoding != "analog",
                           compensate=recipe.compensate, maxpool_mode=recipe.maxpool_mode)
    if not any(True for _ in site_nodes(thresholds)):
        warnings.warn(f"{source} has no activation site: the converted network has no spiking neuron "
                      "and computes the ANN exactly. Run `spikecast inspect` to see its ops.", stacklevel=3)
    metadata = {
        "source": source,
        "recipe": recipe.to_dict(),
        "calibration_set": images.to_dict(),
        "sites": [stats[k].to_dict() for k in stats],
    }
    if reconstruction is not None:
        metadata["reconstruction"] = reconstruction
    snn = SpikingNetwork(snn_graph, recipe.simulation_config(input_scale), metadata)
    if device is not None:
        snn = snn.to(device)
    if recipe.correction_used != "none" and snn.neurons():
        snn = correct(snn, thresholds, images, recipe.correction_config(), progress=progress, device=device)
    if reconstruction is not None and recipe.distill_steps > 0 and snn.neurons():
        # the twin is right under constant input; the SNN's own steps close what its transient loses
        snn, distilled = distill(snn, graph, images, recipe.reconstruction_config(),
                                 timesteps=recipe.calibration_timesteps, device=device, progress=progress)
        snn.metadata["reconstruction"] = {**reconstruction, "distill": distilled}
    if recipe.profile == "nir":
        # in NIR units (thresholds 1, weights rescaled): exports weight for weight, round trips exactly
        snn = nir_form(snn, example=images.images[:1], weight_bits=recipe.weight_bits)
        if device is not None:
            snn = snn.to(device)
    snn.metadata["seconds"] = round(time.perf_counter() - started, 3)
    return snn


def convert(
    model: ModelLike,
    calib: Optional[DataLike] = None,
    recipe: Optional[Recipe] = None,
    *,
    checkpoint: Optional[Union[str, Path]] = None,
    pretrained: Optional[bool] = None,
    trust_checkpoint: bool = False,
    device: DeviceLike = None,
    progress: bool = True,
    **recipe_overrides,
) -> SpikingNetwork:
    """Convert a network into a spiking network of integrate-and-fire neurons.

    ReLU-like activations become neurons; a weighted layer that reads the output of another
    non-linear op (GELU, SiLU, LayerNorm, attention, ...) reads a bipolar neuron, and those ops run
    with expectation compensation (see :mod:`spikecast.convert.compensation`).

    Args:
        model: an ``nn.Module``, ``"zoo:<name>"`` (e.g. ``"zoo:cifar10-resnet20"``) or a timm name.
        calib: unlabeled calibration data - a tensor, batches, ``(x, y)`` batches, a DataLoader
            (shuffling, augmenting, with workers), a generator, a Dataset, or a
            :class:`~spikecast.calibrate.sample.CalibrationSet`. It is read exactly once into a
            sample of at most ``recipe.calib_images`` images chosen by content, so the result does
            not depend on its order or batching. Labels are ignored.
        recipe: a :class:`~spikecast.recipe.Recipe` (default: ``Recipe()``, spikecast's default
            recipe: mse thresholds, advanced correction, signed neurons, T=32, 512 images; at
            T <= 8 a reconstruction first, then the light correction as initial charge).
        checkpoint: local weights file (.pth/.pt/.th/.safetensors) to load into the model.
        pretrained: load the model's default weights (zoo: default True; timm: False, needs
            internet when True).
        trust_checkpoint: allow a checkpoint that pickles Python objects (runs code from the file).
        device: where calibration runs and the SNN lives (default: the model's device, else CPU);
            the model is not moved (a copy is, when it lives elsewhere).
        progress: show progress bars.
        **recipe_overrides: any :class:`~spikecast.recipe.Recipe` field, applied to ``recipe``:
            ``timesteps``, ``thresholds`` (``"max"`` / ``"percentile"`` / ``"mse"``),
            ``percentile``, ``per_channel``, ``correction`` (``"none"`` / ``"light"`` /
            ``"advanced"``), ``signed``, ``levels``, ``v_init``, ``mask_ratio``, ``mask_sites``,
            ``mask_seed``, ``compensate``, ``encoding``, ``calib_images``, ``reconstruct``
            (``"auto"``: train the quantised twin against the ANN on the calibration images when
            ``timesteps * levels <= 8``; ``"on"`` / ``"off"``), ``reconstruct_steps``,
            ``distill_steps`` (then the SNN itself trained against the ANN). The old names
            ``method=`` and ``calibration=`` still work (DeprecationWarning).

    Returns:
        A :class:`SpikingNetwork`; ``metadata`` follows the schema of :mod:`spikecast.recipe`.
        Raises :class:`UnsupportedOperationError` naming each module path whose op cannot be
        converted (with ``compensate=False``); nothing is skipped silently.
    """
    recipe = build_recipe(recipe, **recipe_overrides)
    if calib is None:
        raise CalibrationError("convert() needs calibration data (`calib=`): a DataLoader, batches or a tensor")
    started = time.perf_counter()
    ann, name = resolve_model(model, checkpoint, pretrained, trust_checkpoint=trust_checkpoint)
    home = device_of(ann)
    device = resolve_device(device, default=home or torch.device("cpu"))
    if home is not None and home != device:
        ann = copy.deepcopy(ann).to(device)  # the caller's model stays where it is
    images = read_calibration_set(calib, recipe, progress=progress)
    normalised = prepare(ann, images.images[:2].to(device), maxpool=recipe.maxpool_rewrite)
    return build_snn(normalised, images, recipe, source=name, device=device, progress=progress, started=started)


def read_calibration_set(calib, recipe: Optional[Recipe] = None, *, progress: bool = False) -> CalibrationSet:
    """The calibration set ``convert(model, calib, recipe)`` uses: ``calib`` read once, at most
    ``recipe.calib_images`` images chosen by content."""
    return calibration_set(calib, max_images=(recipe or Recipe()).calib_images, progress=progress)

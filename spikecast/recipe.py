"""The one conversion recipe: every setting that decides how an ANN becomes an SNN.

A :class:`Recipe` is frozen and serialisable (:meth:`Recipe.to_dict` / :meth:`Recipe.from_dict`).
``spikecast.convert``, fine-tuning's conversion, the CLI, the demo and batch jobs all build one and
record it, the same way, in the SNN's metadata (``metadata["recipe"]``). The field names are the
library's keyword arguments and, with ``-`` for ``_``, the CLI's flags.

The metadata of a converted network (one schema, written by :func:`spikecast.pipeline.build_snn`)::

    {"source": "zoo:cifar10-resnet20",
     "recipe": Recipe.to_dict(),
     "calibration_set": {"images": 512, "images_read": 50000, "batches_read": 782, ...},
     "sites": [per activation site: name, max, numel, firing_fraction, mean_positive],
     "reconstruction": {the label-free reconstruction's settings, loss, seconds; only when it ran},
     "correction": {what the layer-wise correction did; only when it ran},
     "seconds": 61.8}

Read it with :func:`recipe_of` and :func:`calibration_set_of`, which also understand the metadata
of networks saved before this schema (``metadata["calibration"]`` / ``metadata["neuron"]``).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional, Union

from spikecast.calibrate.sample import DEFAULT_MAX_IMAGES
from spikecast.calibrate.thresholds import DEFAULT_PERCENTILE, METHODS, CalibrationConfig
from spikecast.convert.correction import FORMS, LEVELS, CorrectionConfig
from spikecast.convert.spiking import NeuronConfig
from spikecast.graph.normalize import MAXPOOL_REWRITES, MaxpoolRewrite
from spikecast.nn.encoding import ENCODINGS
from spikecast.nn.simulation import DEFAULT_BUDGET, SimulationConfig
from spikecast.quant.reconstruct import ReconstructionConfig
from spikecast.runtime.network import SpikingNetwork

#: Calibration images kept when the caller does not say (the calibration set is bounded).
DEFAULT_CALIB_IMAGES = DEFAULT_MAX_IMAGES

#: Conversion profiles: ``"default"`` (spikecast's neurons: signed spikes, half-threshold start,
#: expectation compensation...) and ``"nir"`` (only what a NIR ``IF`` node carries exactly: binary
#: spikes, reset by subtraction, membrane 0 at the start, constant input currents - the bias
#: correction's per-channel current becomes a layer bias; no initial-charge correction).
PROFILES = ("default", "nir")
#: The recipe fields the ``"nir"`` profile fixes (a recipe with another value is refused).
NIR_PROFILE = {"signed": False, "levels": 1, "v_init": 0.0, "mask_ratio": 0.0, "compensate": False,
               "encoding": "analog"}

#: ``reconstruct`` modes: ``"auto"`` reconstructs when a neuron resolves at most
#: :data:`AUTO_RECONSTRUCT_LEVELS` values in its budget (``timesteps * levels``, default profile
#: only), where thresholds alone lose the most; ``"on"`` / ``"off"`` force it.
RECONSTRUCT_MODES = ("auto", "on", "off")
#: How max-pools whose input varies per step convert (``Recipe.maxpool``): ``"moved"`` - moved
#: before the neurons, also through channel concatenations (new neurons where a part is also read
#: unpooled), pooling currents with the spiking max-pool; ``"spikes"`` - a pool of a concatenation
#: stays after it and pools spikes; ``"gate"`` - as ``"spikes"``, with the gate of Rueckauer et al.
#: (2017) (the leader's input passes) instead of the increase of the window maximum; ``"decompose"`` -
#: a pool of a concatenation becomes the exact tree ``max(a, b) = b + relu(a - b)`` of new neurons
#: (``ceil(log2(k*k))`` extra neuron layers per k x k pool).
MAXPOOL_METHODS = tuple(MAXPOOL_REWRITES)
AUTO_RECONSTRUCT_LEVELS = 8
#: ``per_channel="auto"`` gives one threshold per channel when a reconstruction starts from them
#: and a neuron resolves at most this many values in its budget (``timesteps * levels``): the
#: validation split's few-step comparison (benchmarks/RESULTS.md, ``fewstep-validation``) chose
#: per-channel starts for T=4 single-spike conversions; longer budgets were not compared there.
AUTO_PER_CHANNEL_LEVELS = 4
#: ``reconstruct_timesteps="auto"``: a reconstruction for a budget of more steps than this trains the
#: network for this many (twin, correction, distillation) and runs it for the whole budget - a network
#: trained for few steps keeps improving when run longer. Chosen on the validation split (section
#: ``fewstep-validation-t8`` at 65f8e5e, 2,000 class-balanced images, three seeds): at T=8, trained for
#: 4 (per channel, QDrop 0.5) against trained for 8 (per layer), ResNet-20 82.85% vs 83.73%, ResNet-32
#: 83.27% vs 82.07%, mean 83.06% vs 82.90% (but ResNet-32 trained for 8 reads 86.28% at T=32 against
#: 84.27%: trained for 4 stays further below its ANN when run long).
AUTO_RECONSTRUCT_TIMESTEPS = 4
#: ``reconstruct_drop="auto"``: the QDrop share (``ReconstructionConfig.drop``) of a reconstruction that
#: trains for fewer steps than the network runs (``timesteps > calibration_timesteps``); none when it
#: trains for its whole budget.
#: Chosen on the validation split: at T=4 (``fewstep-validation``, 0940efd) 0.5 did not beat none;
#: at T=8 trained for 4 (``fewstep-validation-t8``, 65f8e5e, 2,000 class-balanced images, three seeds)
#: mean top-1 over ResNet-20 and ResNet-32 was 83.06% with 0.5, 82.92% without and 82.90% trained for
#: 8 per layer - within the seeds' spread (sd 0.1-0.8), so this is the rule's pick, not a clear win.
AUTO_RECONSTRUCT_DROP = 0.5

#: Old keyword names still accepted (with a DeprecationWarning): they named the wrong stage.
DEPRECATED_NAMES = {"method": "thresholds", "calibration": "correction"}


@dataclass(frozen=True)
class Recipe:
    """How to convert. The defaults are spikecast's default recipe.

    Thresholds: ``thresholds`` is how each site's threshold is chosen from the calibration
    activations (``"max"``, ``"percentile"`` with ``percentile``, or ``"mse"``: least expected
    error for ``timesteps`` steps), ``per_channel`` one per channel (``"auto"``, the default: per
    channel when a reconstruction starts from them and ``timesteps * levels <= 4``, else per layer;
    :attr:`per_channel_used` gives the resolved value).
    Neurons: ``signed`` (may take back a spike), ``levels`` (spikes per step), ``v_init``
    (initial potential / threshold), random spike masking (``mask_*``), ``compensate`` (run
    non-linear ops with expectation compensation; ``False`` refuses them).
    Correction: ``correction`` is the layer-wise post-conversion correction with the ANN as teacher
    (``"none"``, ``"light"``, ``"advanced"``; ``"auto"``: ``"light"`` after a reconstruction, else
    ``"advanced"``); ``correction_form`` ``"current"`` (a per-step current plus initial charge) or
    ``"charge"`` (initial charge only: it fades over longer runs, so a network corrected for a small
    T keeps its accuracy at larger T; what QCFS fine-tuning uses; ``"auto"``: ``"charge"`` after a
    reconstruction, else ``"current"``). :attr:`correction_used` / :attr:`correction_form_used`
    give the resolved values.
    Profile: ``profile="nir"`` builds a network that a NIR file carries exactly (the fields in
    :data:`NIR_PROFILE`, which :func:`build_recipe` sets when ``profile="nir"`` is given; the
    correction then skips the initial-charge step, and the result is in NIR units: thresholds 1,
    see :func:`spikecast.export.nir.nir_form`); ``weight_bits`` (nir profile only) puts each
    layer's weights and biases on a power-of-two grid of that many bits, so every reader computes
    the same membranes bit for bit (inputs on a grid too: ``spikecast.export.nir.on_input_grid``).
    Reconstruction: ``reconstruct`` trains the network's quantised twin (QCFS, ``timesteps *
    levels`` levels) against the ANN on the calibration images for ``reconstruct_steps`` steps -
    no labels - before conversion (:mod:`spikecast.quant.reconstruct`); ``"auto"`` (default) does
    so when ``timesteps * levels <= 8``; after the correction, ``distill_steps`` steps of
    backpropagation through time train the SNN itself against the ANN (0: none).
    ``reconstruct_timesteps`` is the budget the reconstruction and everything after it (thresholds,
    the twin's levels, the correction, the distillation) train for; the network still runs
    ``timesteps`` by default (``"auto"``: ``timesteps``, at most :data:`AUTO_RECONSTRUCT_TIMESTEPS`;
    :attr:`calibration_timesteps` gives the resolved value). ``reconstruct_drop`` is the share of the
    twin's activations passed unrounded at each reconstruction step (QDrop; ``"auto"``:
    :data:`AUTO_RECONSTRUCT_DROP` when the reconstruction trains for fewer steps than ``timesteps``, else
    0; :attr:`reconstruct_drop_used` gives the resolved value).
    Max-pools: ``maxpool`` (:data:`MAXPOOL_METHODS`) is how a max-pool inside the spiking part
    converts.
    Simulation: ``timesteps`` is the budget T (the default T of ``snn(x)``; calibrated for unless a
    reconstruction trains for fewer, see ``reconstruct_timesteps``),
    ``encoding`` the input code. Data: ``calib_images`` bounds the calibration set (the images
    kept, chosen by content, from however many the calibration data holds).
    """

    timesteps: int = DEFAULT_BUDGET
    thresholds: str = "mse"
    percentile: float = DEFAULT_PERCENTILE
    per_channel: Union[bool, str] = "auto"
    correction: str = "auto"
    correction_form: str = "auto"
    signed: bool = True
    levels: int = 1
    v_init: float = 0.5
    mask_ratio: float = 0.0
    mask_sites: Optional[tuple[str, ...]] = None
    mask_seed: int = 0
    compensate: bool = True
    encoding: str = "analog"
    calib_images: int = DEFAULT_CALIB_IMAGES
    profile: str = "default"
    weight_bits: Optional[int] = None
    reconstruct: str = "auto"
    reconstruct_steps: int = ReconstructionConfig.steps
    distill_steps: int = ReconstructionConfig.distill_steps
    maxpool: str = "moved"
    reconstruct_timesteps: Union[int, str] = "auto"
    reconstruct_drop: Union[float, str] = "auto"

    def __post_init__(self):
        if self.maxpool not in MAXPOOL_METHODS:
            raise ValueError(f"recipe: unknown maxpool method {self.maxpool!r}; choose one of {MAXPOOL_METHODS}")
        if self.reconstruct not in RECONSTRUCT_MODES:
            raise ValueError(f"recipe: unknown reconstruct mode {self.reconstruct!r}; choose one of {RECONSTRUCT_MODES}")
        if self.profile not in PROFILES:
            raise ValueError(f"recipe: unknown profile {self.profile!r}; choose one of {PROFILES}")
        if self.weight_bits is not None:
            if self.profile != "nir":
                raise ValueError("recipe: weight_bits (weights on a power-of-two grid) belongs to profile='nir'; "
                                 "for other networks use spikecast.quantize_weights")
            if isinstance(self.weight_bits, bool) or int(self.weight_bits) != self.weight_bits \
                    or not 2 <= self.weight_bits <= 16:
                raise ValueError(f"recipe: weight_bits must be an integer in 2..16, got {self.weight_bits!r}")
        if self.profile == "nir":
            wrong = [f"{k}={getattr(self, k)!r} (needs {v!r})" for k, v in NIR_PROFILE.items() if getattr(self, k) != v]
            if wrong:
                raise ValueError("recipe: profile='nir' needs what a NIR IF node carries; got " + ", ".join(wrong))
        if isinstance(self.timesteps, bool) or int(self.timesteps) != self.timesteps or self.timesteps < 1:
            raise ValueError(f"recipe: timesteps must be a positive integer, got {self.timesteps!r}")
        if self.thresholds not in METHODS:
            raise ValueError(f"recipe: unknown thresholds method {self.thresholds!r}; choose one of {METHODS}")
        if self.per_channel not in (True, False, "auto"):
            raise ValueError(f"recipe: per_channel must be True, False or 'auto', got {self.per_channel!r}")
        if self.correction not in ("auto",) + LEVELS:
            raise ValueError(f"recipe: unknown correction {self.correction!r}; choose one of {('auto',) + LEVELS}")
        if self.correction_form not in ("auto",) + FORMS:
            raise ValueError(f"recipe: unknown correction_form {self.correction_form!r}; choose one of "
                             f"{('auto',) + FORMS}")
        if self.profile == "nir" and self.correction_form_used == "charge":
            raise ValueError("recipe: profile='nir' has no initial membrane charge (a NIR IF node starts at 0); use "
                             "correction_form='current'")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"recipe: unknown encoding {self.encoding!r}; choose one of {ENCODINGS}")
        if int(self.calib_images) != self.calib_images or self.calib_images < 1:
            raise ValueError(f"recipe: calib_images must be a positive integer, got {self.calib_images!r}")
        if self.mask_sites is not None and not isinstance(self.mask_sites, tuple):
            object.__setattr__(self, "mask_sites", tuple(self.mask_sites))
        if self.reconstruct_timesteps != "auto":
            r = self.reconstruct_timesteps
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= self.timesteps:
                raise ValueError(f"recipe: reconstruct_timesteps must be 'auto' or an integer in 1..timesteps "
                                 f"({self.timesteps}), got {r!r}")
            if not self.reconstructs:
                raise ValueError("recipe: reconstruct_timesteps is the budget a reconstruction trains for, and this "
                                 "recipe does not reconstruct; set reconstruct='on' or leave reconstruct_timesteps "
                                 "'auto'")
        if self.reconstruct_drop != "auto":
            d = self.reconstruct_drop
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
                raise ValueError(f"recipe: reconstruct_drop must be 'auto' or a fraction in [0, 1), got {d!r}")
            if not self.reconstructs:
                raise ValueError("recipe: reconstruct_drop is the QDrop share of a reconstruction, and this recipe "
                                 "does not reconstruct; set reconstruct='on' or leave reconstruct_drop 'auto'")
        self.neuron_config()  # validates levels, mask ratio
        self.reconstruction_config()  # validates the steps
        self.calibration_config()  # validates percentile

    # ------------------------------------------------------------------ the stages' configs
    @property
    def reconstructs(self) -> bool:
        """Whether conversion runs the label-free reconstruction (``reconstruct`` resolved)."""
        if self.reconstruct == "auto":
            return self.profile == "default" and self.timesteps * int(self.levels) <= AUTO_RECONSTRUCT_LEVELS
        return self.reconstruct == "on"

    @property
    def calibration_timesteps(self) -> int:
        """The budget the calibration stages aim at: ``reconstruct_timesteps`` resolved when the recipe
        reconstructs (``"auto"``: ``min(timesteps, AUTO_RECONSTRUCT_TIMESTEPS)``), else ``timesteps``.
        Thresholds, the twin's levels, the correction and the distillation are fitted to it; the
        network is simulated for ``timesteps``."""
        if not self.reconstructs:
            return int(self.timesteps)
        if self.reconstruct_timesteps == "auto":
            return min(int(self.timesteps), AUTO_RECONSTRUCT_TIMESTEPS)
        return int(self.reconstruct_timesteps)

    @property
    def per_channel_used(self) -> bool:
        """``per_channel`` resolved: ``"auto"`` is one threshold per channel when the reconstruction
        starts from them and a neuron resolves at most :data:`AUTO_PER_CHANNEL_LEVELS` values in its
        budget (the twin's per-channel clips then absorb what per-layer rounding loses at T=4), else
        one per layer."""
        if self.per_channel != "auto":
            return bool(self.per_channel)
        return self.reconstructs and self.calibration_timesteps * int(self.levels) <= AUTO_PER_CHANNEL_LEVELS

    @property
    def correction_used(self) -> str:
        """``correction`` resolved: ``"auto"`` is ``"light"`` after a reconstruction, else ``"advanced"``
        (the threshold refinement fits the thresholds to ``timesteps`` alone; after a reconstruction
        the trained clips are kept, so the network still improves when run longer)."""
        if self.correction != "auto":
            return self.correction
        return "light" if self.reconstructs else "advanced"

    @property
    def correction_form_used(self) -> str:
        """``correction_form`` resolved: ``"auto"`` is ``"charge"`` after a reconstruction (the
        twin's error at ``timesteps`` is a start-up deficit, as after QCFS fine-tuning), else
        ``"current"``."""
        if self.correction_form != "auto":
            return self.correction_form
        return "charge" if self.reconstructs and self.profile != "nir" else "current"

    @property
    def maxpool_rewrite(self) -> MaxpoolRewrite:
        """How normalisation rewrites max-pools: through channel concatenations for ``"moved"``,
        the exact decomposition for ``"decompose"``."""
        return MAXPOOL_REWRITES[self.maxpool]

    @property
    def maxpool_mode(self) -> str:
        """The :class:`~spikecast.nn.maxpool.SpikingMaxPool` mode of ``maxpool``."""
        return "gate" if self.maxpool == "gate" else "max"

    @property
    def reconstruct_drop_used(self) -> float:
        """``reconstruct_drop`` resolved: ``"auto"`` is :data:`AUTO_RECONSTRUCT_DROP` when the
        reconstruction trains for fewer steps than the network runs (it then serves longer runs than it
        sees), else 0."""
        if self.reconstruct_drop != "auto":
            return float(self.reconstruct_drop)
        return AUTO_RECONSTRUCT_DROP if int(self.timesteps) > self.calibration_timesteps else 0.0

    def reconstruction_config(self) -> ReconstructionConfig:
        return ReconstructionConfig(steps=int(self.reconstruct_steps), distill_steps=int(self.distill_steps),
                                    drop=self.reconstruct_drop_used)

    def calibration_config(self) -> CalibrationConfig:
        # a neuron with `levels` spike sizes resolves levels*T values in T steps: choose its range for that
        return CalibrationConfig(method=self.thresholds, percentile=self.percentile, per_channel=self.per_channel_used,
                                 timesteps=self.calibration_timesteps * int(self.levels), v_init=self.v_init)

    def neuron_config(self) -> NeuronConfig:
        return NeuronConfig(v_init=self.v_init, mask_ratio=self.mask_ratio, mask_sites=self.mask_sites,
                            mask_seed=self.mask_seed, signed=self.signed, levels=self.levels)

    def correction_config(self) -> CorrectionConfig:
        # a NIR file has no initial membrane potential: the nir profile corrects with currents only
        return CorrectionConfig(level=self.correction_used, timesteps=self.calibration_timesteps,
                                potential=self.profile != "nir", form=self.correction_form_used)

    def simulation_config(self, input_scale: float = 1.0) -> SimulationConfig:
        return SimulationConfig(timesteps=self.timesteps, encoding=self.encoding, input_scale=input_scale)

    # ------------------------------------------------------------------ round trip
    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` (field names; unknown names are an error)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown recipe setting(s): {', '.join(unknown)}; known: "
                            f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mask_sites"] = list(self.mask_sites) if self.mask_sites is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """The recipe recorded by :meth:`to_dict` (unknown keys are an error, missing ones default;
        a recipe recorded before reconstruction existed did not reconstruct).

        A recipe recorded before ``reconstruct_drop`` existed gets 0: the default of the release before
        it (QDrop's default changed with the validation runs; ``metadata["reconstruction"]["drop"]`` of a
        converted network says what it used)."""
        data = dict(data)
        data.setdefault("reconstruct", "off")
        data.setdefault("distill_steps", 0)  # nor did one recorded before the SNN's distillation existed
        data.setdefault("per_channel", False)  # and one recorded before "auto" thresholds per channel: per layer
        recipe = cls().replace(**data)
        if "reconstruct_timesteps" not in data and recipe.reconstructs:
            # one recorded before reconstruct_timesteps trained for its whole budget
            recipe = recipe.replace(reconstruct_timesteps=int(recipe.timesteps))
        if "reconstruct_drop" not in data and recipe.reconstructs:
            recipe = recipe.replace(reconstruct_drop=0.0)  # and one recorded before the field: no QDrop
        return recipe


def build_recipe(recipe: Optional[Recipe] = None, **settings: Any) -> Recipe:
    """``recipe`` (default: :class:`Recipe`'s defaults) with ``settings`` (field names) applied.

    The old names ``method=`` (now ``thresholds=``) and ``calibration=`` (now ``correction=``)
    are still accepted, with a DeprecationWarning; unknown names are a TypeError.
    """
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a spikecast Recipe, got {type(recipe).__name__}")
    changes = {}
    if settings.get("profile") == "nir":
        changes.update(NIR_PROFILE)  # the profile's fields first; explicit settings may only repeat them
    for key, value in settings.items():
        if key in DEPRECATED_NAMES:
            new = DEPRECATED_NAMES[key]
            warnings.warn(f"{key}= is deprecated: use {new}= (same values)", DeprecationWarning, stacklevel=3)
            if new in settings:
                raise TypeError(f"both {key}= and {new}= given: use {new}= only")
            key = new
        changes[key] = value
    return (recipe or Recipe()).replace(**changes)


def _metadata(source: Union[SpikingNetwork, dict]) -> tuple[dict, Any]:
    """(metadata dict, simulation config or None) of a SpikingNetwork or a metadata dict."""
    if isinstance(source, dict):
        return source, None
    metadata = getattr(source, "metadata", None)
    if not isinstance(metadata, dict):
        raise TypeError(f"expected a SpikingNetwork or its metadata dict, got {type(source).__name__}")
    return metadata, getattr(source, "config", None)


def recipe_of(source: Union[SpikingNetwork, dict]) -> Recipe:
    """The :class:`Recipe` a network was converted with, from a ``SpikingNetwork`` or its metadata.

    Reads ``metadata["recipe"]``; for networks saved before it existed, rebuilds the recipe from the
    old ``metadata["calibration"]`` (``method``, ``percentile``, ``per_channel``, ``level``,
    ``timesteps``, ``images``) and ``metadata["neuron"]`` entries (a fine-tuned QCFS network's
    ``"qcfs(L=...)"`` method becomes the fine-tuning's initial threshold method). The encoding of an
    old network comes from its simulation settings when a ``SpikingNetwork`` is given.
    """
    metadata, simulation = _metadata(source)
    if "recipe" in metadata:
        return Recipe.from_dict(metadata["recipe"])
    old, neuron = metadata.get("calibration") or {}, metadata.get("neuron") or {}
    if not old and not neuron:
        raise ValueError("no recipe in this metadata (neither 'recipe' nor the old 'calibration' / 'neuron' entries)")
    fields_ = {}
    method = old.get("method")
    if method in METHODS:
        fields_["thresholds"] = method
    elif isinstance(method, str) and method.startswith("qcfs"):
        config = (metadata.get("finetune") or {}).get("config") or {}
        fields_["thresholds"] = config.get("threshold_method", "mse")
    if old.get("percentile") is not None:
        fields_["percentile"] = float(old["percentile"])
    for key, name in (("per_channel", "per_channel"), ("level", "correction"), ("timesteps", "timesteps")):
        if old.get(key) is not None:
            fields_[name] = old[key]
    if old.get("images"):
        fields_["calib_images"] = int(old["images"])
    for key in ("v_init", "mask_ratio", "mask_seed", "signed", "levels", "compensate"):
        if neuron.get(key) is not None:
            fields_[key] = neuron[key]
    if neuron.get("mask_sites"):
        fields_["mask_sites"] = tuple(neuron["mask_sites"])
    fields_["reconstruct"] = "off"  # networks saved before the recipe existed were never reconstructed
    fields_["distill_steps"] = 0
    fields_.setdefault("per_channel", False)  # nor had thresholds per channel unless they recorded it
    if simulation is not None:
        fields_["encoding"] = simulation.encoding
        fields_.setdefault("timesteps", simulation.timesteps)
    return Recipe().replace(**fields_)


def calibration_set_of(source) -> dict:
    """``{"images", "images_read", "batches_read"}`` of the calibration set a network was converted
    with (old metadata: ``images`` and ``images_read`` are the images used, ``batches_read`` None)."""
    metadata, _ = _metadata(source)
    if "calibration_set" in metadata:
        return dict(metadata["calibration_set"])
    images = (metadata.get("calibration") or {}).get("images")
    return {"images": images, "images_read": images, "batches_read": None}

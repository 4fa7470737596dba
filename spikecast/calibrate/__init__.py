"""spikecast.calibrate: the calibration set and thresholds (stage 3).

* :mod:`~spikecast.calibrate.sample` - the calibration set: any source read once into a bounded
  sample chosen by content (order- and batching-independent)
* :mod:`~spikecast.calibrate.statistics` - streaming activation statistics (max, histograms, per channel)
* :mod:`~spikecast.calibrate.thresholds` - ``max`` / ``percentile`` / ``mse`` thresholds, per site or channel
* :mod:`~spikecast.convert.correction` - layer-wise threshold refinement, bias and potential correction
* :mod:`~spikecast.calibrate.rescale` - per-channel thresholds moved into the weights (threshold 1)
"""

from spikecast.calibrate.sample import DEFAULT_MAX_IMAGES, CalibrationSet, calibration_set
from spikecast.calibrate.thresholds import METHODS, CalibrationConfig, calibrate, mse_threshold

__all__ = ["METHODS", "CalibrationConfig", "CalibrationSet", "DEFAULT_MAX_IMAGES", "calibrate", "calibration_set",
           "mse_threshold"]

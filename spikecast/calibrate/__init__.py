"""spikecast.calibrate: thresholds (stage 3) and post-conversion correction with the ANN as teacher.

* :mod:`~spikecast.calibrate.statistics` - streaming activation statistics (max, histograms, per channel)
* :mod:`~spikecast.calibrate.thresholds` - ``max`` / ``percentile`` / ``mse`` thresholds, per site or channel
* :mod:`~spikecast.convert.correction` - layer-wise threshold refinement, bias and potential correction
* :mod:`~spikecast.calibrate.rescale` - per-channel thresholds moved into the weights (threshold 1)
"""

from spikecast.calibrate.thresholds import METHODS, CalibrationConfig, calibrate, mse_threshold

__all__ = ["METHODS", "CalibrationConfig", "calibrate", "mse_threshold"]

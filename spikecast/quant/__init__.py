"""Quantisation: QCFS activations (the ANN twin of a T-step IF neuron) and int8 / int4 weights."""

from spikecast.quant.qcfs import QCFSSite, qcfs_thresholds, to_qcfs
from spikecast.quant.integer import int8_kernels, integer_network
from spikecast.quant.weights import integer_form, quantize_tensor, quantize_weights

__all__ = ["QCFSSite", "to_qcfs", "qcfs_thresholds", "quantize_weights", "quantize_tensor", "integer_form",
           "integer_network", "int8_kernels"]

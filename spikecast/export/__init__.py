"""``spikecast.export``: take a network out of PyTorch - the ANN (fp32 / int8) and the SNN step graph as ONNX.

    from spikecast.export import export_ann, quantize_ann_int8, export_snn_step, OnnxSpikingNetwork, run_ann
    export_ann(ann, "ann.onnx", example=x[:2])                # fp32 reference
    quantize_ann_int8("ann.onnx", "ann-int8.onnx", calib)     # int8 QDQ baseline
    export_snn_step(snn, "snn-step.onnx", example=x[:2])      # one timestep, explicit state
    OnnxSpikingNetwork("snn-step.onnx").simulate(x, [8, 32])  # same results as snn.simulate
    to_nir(snn, "snn.nir")                                    # NIR (convert with profile="nir")
    from_nir("snn.nir")                                       # back, bit-identical

See :mod:`spikecast.export.onnx` for the step graph's inputs, outputs and metadata, and
:mod:`spikecast.export.nir` for what NIR carries (:mod:`spikecast.export.nir_readers` runs a NIR
file in sinabs and snnTorch and compares them with spikecast).
"""

from spikecast.export.onnx import (METADATA_KEY, STEP_FORMAT, OnnxSpikingNetwork, SnnStepModule, StateSpec,
                                   check_exportable, export_ann, export_snn_step, quantize_ann_int8, run_ann)
from spikecast.export.nir import IF_SEMANTICS, READER_SETTINGS, from_nir, nir_form, to_nir, to_nir_graph

__all__ = [
    "export_ann", "quantize_ann_int8", "run_ann", "export_snn_step", "OnnxSpikingNetwork", "SnnStepModule",
    "StateSpec", "check_exportable", "METADATA_KEY", "STEP_FORMAT",
    "to_nir", "to_nir_graph", "from_nir", "nir_form", "IF_SEMANTICS", "READER_SETTINGS",
]

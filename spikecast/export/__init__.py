"""``spikecast.export``: take a network out of PyTorch - the ANN (fp32 / int8) and the SNN step graph as ONNX.

    from spikecast.export import export_ann, quantize_ann_int8, export_snn_step, OnnxSpikingNetwork, run_ann
    export_ann(ann, "ann.onnx", example=x[:2])                # fp32 reference
    quantize_ann_int8("ann.onnx", "ann-int8.onnx", calib)     # int8 QDQ baseline
    export_snn_step(snn, "snn-step.onnx", example=x[:2])      # one timestep, explicit state
    OnnxSpikingNetwork("snn-step.onnx").simulate(x, [8, 32])  # same results as snn.simulate

See :mod:`spikecast.export.onnx` for the step graph's inputs, outputs and metadata.
"""

from spikecast.export.onnx import (METADATA_KEY, STEP_FORMAT, OnnxSpikingNetwork, SnnStepModule, StateSpec,
                                   check_exportable, export_ann, export_snn_step, quantize_ann_int8, run_ann)

__all__ = [
    "export_ann", "quantize_ann_int8", "run_ann", "export_snn_step", "OnnxSpikingNetwork", "SnnStepModule",
    "StateSpec", "check_exportable", "METADATA_KEY", "STEP_FORMAT",
]

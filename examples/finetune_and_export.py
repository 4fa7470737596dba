"""Fine-tune for few timesteps (QCFS), quantise the weights and export to ONNX, then run the SNN in
onnxruntime - on scikit-learn's digits, offline, in well under a minute.

    python examples/finetune_and_export.py --out runs/digits-onnx

For the CIFAR ResNets: ``spikecast finetune zoo:cifar10-resnet20 --data cifar10 --levels 4``
(see benchmarks/bench_finetune.py for the measured recipe).
"""

import argparse

import torch

import spikecast
from spikecast.export import OnnxSpikingNetwork, export_ann, export_snn_step, quantize_ann_int8, run_ann
from spikecast.zoo.digits import digits_tensors

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/digits-onnx")
parser.add_argument("--fast", action="store_true", help="small setting (CI)")
args = parser.parse_args()
torch.set_num_threads(1)  # tiny tensors: one thread is fastest

x_train, y_train = digits_tensors("train")
x_test, y_test = digits_tensors("test")
ann = spikecast.zoo.create_model("digits-cnn", pretrained=True)

# 1. QCFS fine-tune: the ANN learns with 4-level quantised activations, so the SNN at T=4 computes
#    what was trained. A checkpoint is written every epoch; calling again resumes.
snn = spikecast.finetune(ann, (x_train, y_train), levels=4, epochs=1 if args.fast else 3,
                         checkpoint_dir=f"{args.out}/checkpoints")
T = snn.config.timesteps
accuracy = lambda net: float((net.simulate(x_test, T).argmax(-1) == y_test).float().mean())  # noqa: E731
print(f"SNN after QCFS fine-tune, T={T}: {100 * accuracy(snn):.2f}%")

# 2. int8 weights (per-channel symmetric): the accuracy change
snn8 = spikecast.quantize_weights(snn, bits=8)
print(f"with int8 weights: {100 * accuracy(snn8):.2f}%")

# 3. ONNX: the ANN, its int8 version (onnxruntime static quantisation), the SNN step graph
ann_path = export_ann(ann, f"{args.out}/ann.onnx", example=x_test[:2])
int8_path = quantize_ann_int8(ann_path, f"{args.out}/ann_int8.onnx", x_train[:256])
step_path = export_snn_step(snn8, f"{args.out}/snn_step.onnx", example=x_test[:2])
for name, path in (("ANN", ann_path), ("int8 ANN", int8_path)):
    acc = float((run_ann(path, x_test).argmax(-1) == y_test).float().mean())
    print(f"onnxruntime {name}: {100 * acc:.2f}%")

# 4. run the SNN step graph for T steps in onnxruntime (membrane state passed in and out)
onnx_snn = OnnxSpikingNetwork(step_path)
out = onnx_snn.simulate(x_test, T)
diff = float((out - snn8.simulate(x_test, T)).abs().max())
print(f"onnxruntime SNN, T={T}: {100 * float((out.argmax(-1) == y_test).float().mean()):.2f}% "
      f"(max abs difference to torch {diff:.1e})")

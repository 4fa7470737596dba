"""Calibrate, validate and report the CIFAR-10 ResNet-20 (shared weights and data).

    python examples/cifar_resnet20_report.py --out runs/resnet20-report
    python examples/cifar_resnet20_report.py --fast          # the small setting CI runs

Needs the shared folder (SPIKECAST_SHARED, default ../shared): the checkpoint
models/cifar10/resnet20.th and the images data/cifar10-jpeg/. Open runs/.../report.html.
"""

import argparse

import spikecast
from spikecast.data import TensorBatches, cifar10_tensors

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/resnet20-report")
parser.add_argument("--fast", action="store_true", help="small setting (CI): fewer images and budgets")
args = parser.parse_args()

ann = spikecast.zoo.create_model("cifar10-resnet20", pretrained=True)  # the shared checkpoint
x_cal, _ = cifar10_tensors("train", limit=128 if args.fast else 512)   # unlabeled calibration images
x, y = cifar10_tensors("test", limit=200 if args.fast else None)       # class-balanced subset, or all 10,000

# The default recipe (mse thresholds + advanced layer-wise correction, signed neurons) for T=16.
snn = spikecast.convert(ann, calib=x_cal, timesteps=16, correction="light" if args.fast else "advanced")

# One report: accuracy and agreement at every T, latency to parity, early exit, per-layer firing
# rates and errors, synaptic operations and energy per image.
timesteps = [4, 8, 16, 32] if args.fast else [1, 2, 4, 8, 16, 32, 64, 128]
report = spikecast.build_report(ann, snn, TensorBatches(x, y, batch_size=250), timesteps,
                                model="zoo:cifar10-resnet20", data_name="cifar10:test",
                                activity_images=16 if args.fast else 128)
paths = spikecast.report(report, args.out)
print(report.summary_table())
print("latency to parity:", report.latency_to_parity())
print("open", paths["report.html"])

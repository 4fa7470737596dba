"""Convert a timm model to a spiking network in one call and print its accuracy-vs-T table.

    python examples/convert_timm_model.py                    # resnet18 (random weights, offline)
    python examples/convert_timm_model.py --fast             # the small setting CI runs

With random weights there is no accuracy to speak of, so the table shows how closely the SNN
follows the ANN (top-1 agreement, cosine of the outputs). For trained weights, load them into the
model first (``timm.create_model(name, pretrained=True)`` or ``checkpoint=`` in ``convert``).
"""

import argparse

import timm
import torch

import spikecast

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="resnet18", help="any timm model name")
parser.add_argument("--fast", action="store_true", help="tiny setting (CI)")
args = parser.parse_args()

torch.manual_seed(0)
size, n = (64, 16) if args.fast else (128, 64)
model = timm.create_model(args.model, pretrained=False, num_classes=10).eval()
images = torch.randn(n, 3, size, size)  # stand-in data: use real (unlabeled) images for real thresholds

# One call: trace (F.relu, BatchNormAct2d, ... all arrive as ATen ops), fold BatchNorm, calibrate a
# threshold per activation site on the images, and build the SNN of integrate-and-fire neurons.
snn = spikecast.convert(model, calib=images, timesteps=32, correction="none" if args.fast else "light")
print(f"{args.model}: {len(snn.neurons())} layers of integrate-and-fire neurons")

# Validate against the ANN at every budget from ONE simulation of the largest T. Without labels the
# table reports agreement (same top-1 as the ANN) and the cosine of the outputs.
timesteps = [4, 16, 64] if args.fast else [1, 2, 4, 8, 16, 32, 64, 128]
result = spikecast.validate(model, snn, images, timesteps=timesteps)
print(result.table())

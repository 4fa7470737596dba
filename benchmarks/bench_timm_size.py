"""timm max-pool and concat families at their real input size, the default call (issue 18).

For timm ``vgg11_bn`` (224x224, max-pools between stages), ``inception_v3`` (299x299, inception
blocks: concatenated branches, max-pool and average-pool branches) and ``densenet121`` (224x224,
dense concat blocks, a max-pool in the stem): random weights (``torch.manual_seed(0)`` before
``timm.create_model``; no download), real images - CIFAR-10 JPEGs resized (bilinear) to the model's
input size and normalised with the model's own mean / std (``timm.data.resolve_data_config``),
read through a ``DataLoader``:

* ``spikecast.convert(model, calib=<DataLoader of --calib-images train JPEGs>)``: the default call,
  nothing else (default recipe: budget T=32, mse thresholds, layer-wise correction), timed;
* the SNN on ``--images`` test JPEGs for ``max(--timesteps)`` steps (one simulation, every T read
  from it): cosine between its mean logits after T steps and the ANN's logits, mean over the images.
  Issue 18's target: cosine >= 0.999 at T=64. Logit spread: how much the ANN's logits differ between
  the images (``||ref - mean(ref)|| / ||ref||``; near 0 the cosine says little).

Nothing is chosen here (no setting is tuned; the image subsets are fixed random draws, seed 0).
Writes section ``timm-real-size``.

    python benchmarks/bench_timm_size.py                                   # ~35 min on 2 cores
    python benchmarks/bench_timm_size.py --models vgg11_bn --calib-images 16 --images 2 --no-write
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F

import spikecast
from spikecast.paths import shared_dir
from spikecast.reporting.report import describe_neurons, neuron_summary

import results_file

MODELS = {"vgg11_bn": 224, "inception_v3": 299, "densenet121": 224}
TARGET_T, TARGET_COSINE = 64, 0.999


def loader(split: str, images: int, size: int, mean, std, batch: int, workers: int) -> torch.utils.data.DataLoader:
    """``images`` CIFAR-10 JPEGs of ``split`` (a fixed random subset, seed 0), resized to ``size``."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])
    folder = datasets.ImageFolder(str(shared_dir() / "data" / "cifar10-jpeg" / split), transform=tf)
    index = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[:images].tolist()
    return torch.utils.data.DataLoader(torch.utils.data.Subset(folder, index), batch_size=batch,
                                       num_workers=workers, shuffle=False)


def measure(name: str, size: int, args, timesteps: list[int]) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    calib = loader("train", args.calib_images, size, cfg["mean"], cfg["std"], 32, args.workers)
    x = torch.cat([b for b, _ in loader("test", args.images, size, cfg["mean"], cfg["std"], args.images, 0)])
    with torch.inference_mode():
        ref = model(x)
    row = {"model": name, "size": size, "spread": ((ref - ref.mean(0)).norm() / ref.norm()).item()}
    started = time.perf_counter()
    snn = spikecast.convert(model, calib=calib, progress=False)
    row["convert_s"] = time.perf_counter() - started
    row["correction"] = (snn.metadata.get("correction") or {}).get("images")
    started = time.perf_counter()
    outs = snn.simulate(x, timesteps)
    row["simulate_s"] = time.perf_counter() - started
    row["cosine"] = {t: F.cosine_similarity(outs[t], ref, dim=1).mean().item() for t in timesteps}
    row["neurons"] = describe_neurons(neuron_summary(snn))
    row["pools"] = sum(1 for m in snn.modules() if type(m).__name__ == "SpikingMaxPool")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--images", type=int, default=16, help="test images the cosine is averaged over")
    parser.add_argument("--timesteps", default="8,16,32,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the calibration images")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    run = results_file.start(threads=args.threads)
    timesteps = sorted({int(t) for t in args.timesteps.split(",")})
    head = (["model", "input"] + [f"cos T={t}" for t in timesteps]
            + [f"cos >= {TARGET_COSINE} at T={TARGET_T}", "logit spread", "convert", "correction images",
               "simulate", "spiking max-pools", "neurons"])
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(timesteps) + "---|---:|---:|---:|---:|---:|---|"]
    met = 0
    for name in args.models.split(","):
        row = measure(name, MODELS[name], args, timesteps)
        ok = row["cosine"].get(TARGET_T, 0.0) >= TARGET_COSINE
        met += ok
        lines.append(f"| {name} | {row['size']} | " + " | ".join(f"{row['cosine'][t]:.5f}" for t in timesteps)
                     + f" | {'yes' if ok else '**no**'} | {row['spread']:.2g} | {row['convert_s']:.0f} s | "
                       f"{row['correction']} | {row['simulate_s']:.0f} s | {row['pools']} | {row['neurons']} |")
        print(lines[-1], flush=True)
        gc.collect()
    body = (f"timm models with random weights (seed 0) at their real input size, the default call "
            f"`spikecast.convert(model, calib=<DataLoader of {args.calib_images} CIFAR-10 train JPEGs>)` (default "
            f"recipe, budget T=32; resized bilinearly, normalised with each model's own mean / std). Cosine between "
            f"the SNN's mean logits after T steps and the ANN's logits, mean over {args.images} CIFAR-10 test JPEGs "
            f"(all T from one simulation of {max(timesteps)} steps). Convert: wall time of the call on "
            f"{args.threads} threads (correction images: how many of the calibration images the layer-wise "
            "correction used, chosen by its memory bound). Nothing is chosen here.\n\n" + "\n".join(lines)
            + f"\n\n**{met}/{len(lines) - 2} reach cosine >= {TARGET_COSINE} at T={TARGET_T} with the default call.**")
    if not args.no_write:
        run.write("timm-real-size", "timm max-pool and concat families at their real input size (issue 18)", body)


if __name__ == "__main__":
    main()

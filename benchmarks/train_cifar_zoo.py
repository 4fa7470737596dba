"""Train a CIFAR-10 zoo model whose weights spikecast trains itself, from scratch: the timm
``cifar10-vit-tiny`` and ``cifar10-convnext-nano``, and the classic ``cifar10-vgg-small``,
``cifar10-googlenet-small`` and ``cifar10-densenet-small``.

Trains on spikecast's CIFAR-10 ``"train"`` split (the 45,000 training images outside the validation
split; decoded once, kept in memory; random crop + flip) with spikecast's training loop
(``spikecast.train.loop.train``): AdamW (the transformers) or SGD with momentum 0.9 (the classic
CNNs), one epoch of linear warm-up then cosine decay, label smoothing 0.1, gradient clipping at
norm 1. Progress is checked on the 5,000-image ``"val"`` split
after every epoch; the test set is never read here (``bench_modern_cifar.py`` reads it once per
reported number). The network kept is the one after the recipe's last epoch (the epoch count is
fixed in ``RECIPES``, sized for the CPU time, not chosen on any accuracy). A checkpoint is written
after every epoch under ``cache_dir()/train-<name>-<version>/`` and a rerun resumes from it. The
weights go to ``cache_dir()/<name>-<version>.safetensors``, where
``create_model(name, pretrained=True)`` finds them.

    python benchmarks/train_cifar_zoo.py cifar10-vit-tiny [--epochs N]

The recipes are sized for about 30 minutes on 2 CPU cores (torch 2 threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spikecast.data import cifar10_tensors
from spikecast.paths import cache_dir
from spikecast.train.loop import TrainConfig, train
from spikecast.zoo import create_model
from spikecast.zoo.cifar_classic import CLASSIC_MODELS
from spikecast.zoo.cifar_modern import MODERN_MODELS
from spikecast.zoo.trained import WEIGHTS_VERSION, weights_path
from spikecast.zoo.digits import _save_atomically


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    weight_decay: float = 0.05
    batch_size: int = 128
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    channels_last: bool = False  # NHWC convolutions: 1.3-1.6x faster for the classic CNNs on this CPU


# Measured on 2 cores: ViT ~0.33 s, ConvNeXt ~0.26 s per batch of 128 (forward + backward + step).
RECIPES = {
    "cifar10-vit-tiny": Recipe(epochs=12, lr=1e-3),
    "cifar10-convnext-nano": Recipe(epochs=10, lr=2e-3),
    # Classic CNNs with batch norm: SGD. Epochs sized for <= 30 minutes on 2 idle cores: a GoogLeNet epoch
    # takes 109 s in the training loop (215 s beside other work); VGG ~0.5x and DenseNet ~1x that, from a
    # forward + backward micro-benchmark (where channels-last was 1.3-1.6x faster than NCHW for all three).
    # DenseNet: 10 epochs (95 s each) reached 78.8% on validation, still rising - 17 fit in 30 minutes.
    "cifar10-vgg-small": Recipe(epochs=20, lr=0.05, weight_decay=5e-4, optimizer="sgd", channels_last=True),
    "cifar10-googlenet-small": Recipe(epochs=8, lr=0.05, weight_decay=5e-4, optimizer="sgd", channels_last=True),
    "cifar10-densenet-small": Recipe(epochs=17, lr=0.05, weight_decay=5e-4, optimizer="sgd", channels_last=True),
}


@torch.inference_mode()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = sum(int((model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / max(len(y), 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=MODERN_MODELS + CLASSIC_MODELS)
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--max-batches", type=int, default=None, help="per epoch (quick trial runs)")
    parser.add_argument("--device", default="cpu", help="where to train (cpu, cuda)")
    parser.add_argument("--out", default=None, help="weights file (default: where the zoo looks for them)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.name]
    epochs = args.epochs or recipe.epochs
    started = time.perf_counter()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_model(args.name).to(device)
    layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    # timm's own no-weight-decay set (position embedding, class token) besides the 1-D parameters
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    for name, p in model.named_parameters():
        if name in skip:
            p._spikecast_no_decay = True
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"{args.name}: {sum(p.numel() for p in params):,} parameters; {epochs} epochs; {recipe}", flush=True)

    t = time.perf_counter()
    x_train, y_train = cifar10_tensors("train")
    x_val, y_val = cifar10_tensors("val")
    print(f"data: {tuple(x_train.shape)} train, {tuple(x_val.shape)} validation, loaded in "
          f"{time.perf_counter() - t:.0f} s", flush=True)

    config = TrainConfig(epochs=epochs, lr=recipe.lr, weight_decay=recipe.weight_decay,
                         batch_size=recipe.batch_size, augment="crop-flip", seed=0, max_batches=args.max_batches,
                         max_grad_norm=recipe.max_grad_norm, optimizer=recipe.optimizer,
                         warmup_epochs=recipe.warmup_epochs)

    def batch_step(x, y):
        logits = model(x.to(device, non_blocking=True).contiguous(memory_format=layout))
        loss = F.cross_entropy(logits, y.to(device, non_blocking=True), label_smoothing=recipe.label_smoothing)
        loss.backward()
        return float(loss.detach()), logits.detach().cpu()

    fingerprint = {"model": args.name, "config": repr(config), "label_smoothing": recipe.label_smoothing,
                   "data": str(tuple(x_train.shape))}
    history = train(model, params, batch_step, (x_train, y_train), config, fingerprint=fingerprint,
                    checkpoint_dir=cache_dir() / f"train-{args.name}-{WEIGHTS_VERSION}",
                    evaluate=lambda: top1(model, x_val, y_val),
                    description=args.name)  # one line per epoch on stderr (val = the validation split)

    accuracy = top1(model, x_val, y_val)
    wall = time.perf_counter() - started
    result = {"model": args.name, "val_top1": round(accuracy, 4), "val_images": len(y_val), "epochs": epochs,
              "train_seconds": round(history.seconds, 1), "wall_seconds": round(wall, 1),
              "parameters": sum(p.numel() for p in params)}
    path = Path(args.out) if args.out else weights_path(args.name)
    _save_atomically(model.eval().cpu().to(memory_format=torch.contiguous_format), path, metadata={
        "device": str(device),
        "model": args.name, "epochs": str(epochs), "seed": "0", "val_accuracy": f"{accuracy:.4f}",
        "train_split": f"spikecast cifar10 'train' ({len(y_train)} images)",
        "recipe": json.dumps(recipe.__dict__), "train_seconds": f"{history.seconds:.0f}"})
    result["weights"] = str(path)
    print(f"{args.name}: validation top-1 {100 * accuracy:.2f}% on {len(y_val)} images; training "
          f"{history.seconds / 60:.1f} min, wall {wall / 60:.1f} min; weights {path}", flush=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

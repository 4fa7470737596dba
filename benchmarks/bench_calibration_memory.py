"""The calibration set is read once, in bounded memory, and does not depend on the data's order.

``python benchmarks/bench_calibration_memory.py`` builds an image folder of 20,000 CIFAR-10 JPEGs
(symlinks to the first 2,000 training images of each class of the shared folder, in a temporary
directory - nothing is copied into the repository), then in two fresh subprocesses:

1. converts ``zoo:cifar10-resnet20`` (the default recipe's thresholds, ``correction="none"`` to
   keep it quick) from ``DataLoader(ImageFolder(folder), shuffle=True, num_workers=2,
   batch_size=64)`` with ``calib_images=512``, counting the images read (must be 20,000: read
   once) and keeping the 512-image sample it chose;
2. converts from the 512-image tensor of that sample (the folder re-read in file order, unshuffled, by
   the parent: the same bottom-k by content hash).

It compares the peak resident memory of the two (``getrusage``: the process itself, and the
largest DataLoader worker) and whether every threshold is identical, prints a table and writes it
to benchmarks/RESULTS.md (section "Calibration set: read once, bounded memory").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "Calibration set: read once, bounded memory"


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def _thresholds(snn) -> dict:
    return {name: neuron.threshold.detach().cpu() for name, neuron in snn.neurons().items()}


def child_loader(folder: str, out: str, max_images: int, batch_size: int, workers: int) -> None:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    import spikecast
    from spikecast.data import IMAGENET_MEAN, IMAGENET_STD

    base = _peak_mib(resource.RUSAGE_SELF)
    dataset = datasets.ImageFolder(folder, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(int(time.time())))  # a different order every run
    started = time.perf_counter()
    snn = spikecast.convert("zoo:cifar10-resnet20", loader, correction="none", calib_images=max_images,
                            progress=False)
    seconds = time.perf_counter() - started
    del loader  # workers exit and are reaped: RUSAGE_CHILDREN covers them
    torch.save({"thresholds": _thresholds(snn), "metadata": snn.metadata}, out + ".pt")
    Path(out).write_text(json.dumps({
        "calibration_set": snn.metadata["calibration_set"], "seconds": seconds, "files": len(dataset),
        "rss_before_mib": base, "peak_rss_mib": _peak_mib(resource.RUSAGE_SELF),
        "peak_worker_rss_mib": _peak_mib(resource.RUSAGE_CHILDREN)}))


def child_tensor(sample: str, out: str, max_images: int) -> None:
    import torch
    # the same libraries as the loader run (torchvision's datasets, PIL), so that the comparison
    # measures the data held, not what importing an image library costs
    from torchvision import datasets, transforms  # noqa: F401

    import spikecast

    x = torch.load(sample, weights_only=True)
    started = time.perf_counter()
    snn = spikecast.convert("zoo:cifar10-resnet20", x, correction="none", calib_images=max_images, progress=False)
    seconds = time.perf_counter() - started
    torch.save({"thresholds": _thresholds(snn), "metadata": snn.metadata}, out + ".pt")
    Path(out).write_text(json.dumps({"calibration_set": snn.metadata["calibration_set"], "seconds": seconds,
                                     "peak_rss_mib": _peak_mib(resource.RUSAGE_SELF),
                                     "peak_worker_rss_mib": _peak_mib(resource.RUSAGE_CHILDREN)}))


def build_folder(root: Path, source: Path, per_class: int) -> int:
    n = 0
    for cls in sorted(p.name for p in source.iterdir() if p.is_dir()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(source / cls))[:per_class]:
            link = root / cls / name
            if not link.exists():
                link.symlink_to(source / cls / name)
            n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=2000, help="images per class (default 2000: 20,000)")
    parser.add_argument("--max-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", help="where to build the folder (default: a temporary directory)")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    import results_file

    run = results_file.start()

    from spikecast.data import cifar10_root

    source = cifar10_root() / "train"
    if not source.is_dir():
        print(f"shared CIFAR-10 not found at {source}: set SPIKECAST_SHARED")
        return 1
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        files = build_folder(tmp / "folder", source, args.per_class)
        print(f"image folder: {files} symlinked JPEGs in {tmp / 'folder'}", flush=True)
        child = [sys.executable, str(Path(__file__).resolve())]
        subprocess.run(child + ["_loader", str(tmp / "folder"), str(tmp / "loader.json"), str(args.max_images),
                              str(args.batch_size), str(args.workers)], check=True)
        loader = json.loads((tmp / "loader.json").read_text())
        import torch

        first = torch.load(str(tmp / "loader.json") + ".pt", weights_only=False)
        # the 512 images the loader run chose, as one tensor (the same bytes, re-read from the folder)
        sample = _sample_tensor(tmp / "folder", first["metadata"], args.max_images)
        torch.save(sample, tmp / "sample.pt")
        subprocess.run(child + ["_tensor", str(tmp / "sample.pt"), str(tmp / "tensor.json"), str(args.max_images)],
                       check=True)
        tensor = json.loads((tmp / "tensor.json").read_text())
        second = torch.load(str(tmp / "tensor.json") + ".pt", weights_only=False)

    a, b = first["thresholds"], second["thresholds"]
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cs = loader["calibration_set"]
    read_once = cs["images_read"] == files
    ratio = loader["peak_rss_mib"] / tensor["peak_rss_mib"]
    image_mib = 3 * 32 * 32 * 4 / 2**20
    lines = [
        "| calibration source | images read | batches | kept | peak RSS (process) | peak RSS (largest worker) "
        "| convert time |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| `DataLoader(ImageFolder, shuffle=True, num_workers={args.workers}, batch_size={args.batch_size})`, "
        f"{files} JPEGs | {cs['images_read']} | {cs['batches_read']} | {cs['images']} | "
        f"{loader['peak_rss_mib']:.0f} MiB | {loader['peak_worker_rss_mib']:.0f} MiB | {loader['seconds']:.1f} s |",
        f"| the {tensor['calibration_set']['images']}-image tensor of the same sample | "
        f"{tensor['calibration_set']['images_read']} | {tensor['calibration_set']['batches_read']} | "
        f"{tensor['calibration_set']['images']} | {tensor['peak_rss_mib']:.0f} MiB | - | {tensor['seconds']:.1f} s |",
    ]
    checks = [
        f"- read once: {cs['images_read']} of {files} images read ({'yes' if read_once else 'NO'})",
        f"- peak RSS ratio (loader over 20,000 images / 512-image tensor): {ratio:.2f} (holding all {files} images "
        f"as float32 would take {files * image_mib:.0f} MiB; the sample takes {cs['images'] * image_mib:.1f} MiB)",
        f"- thresholds identical on all {len(a)} neurons: {'yes' if identical else 'NO'}",
    ]
    print("\n".join(lines + [""] + checks))
    body = "\n".join([
        f"`python benchmarks/bench_calibration_memory.py`: `spikecast.convert(\"zoo:cifar10-resnet20\", source, "
        f"correction=\"none\", calib_images={args.max_images})` (default mse thresholds for T=32) in a fresh process "
        f"per row; the source of the first row is a shuffling DataLoader with worker processes over an image folder "
        f"of {files} CIFAR-10 training JPEGs (the first {args.per_class} per class, symlinked into a temporary "
        f"folder), that of the second the tensor of the {cs['images']} images a calibration set keeps from that "
        f"folder (bottom-k by content hash, re-read in file order without shuffling in the parent process: "
        f"the same images whatever the order). Peak RSS from `getrusage` (`ru_maxrss`: the process; RUSAGE_CHILDREN: the largest worker); both processes import the same libraries (torchvision datasets, PIL), so the difference is the data held.",
        "", *lines, "", *checks])
    if not args.no_write:
        run.write("calibration-memory", SECTION, body)
    return 0 if (identical and read_once) else 1


def _sample_tensor(folder: Path, metadata: dict, max_images: int):
    """The images a calibration set of ``max_images`` keeps from ``folder`` (read in file order: the set
    does not depend on the order), as one tensor."""
    import torch
    from torchvision import datasets, transforms

    from spikecast.calibrate.sample import calibration_set
    from spikecast.data import IMAGENET_MEAN, IMAGENET_STD

    dataset = datasets.ImageFolder(str(folder), transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    images = calibration_set(torch.utils.data.DataLoader(dataset, batch_size=500), max_images=max_images).images
    assert len(images) == metadata["calibration_set"]["images"]
    return images


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_loader":
        child_loader(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_tensor":
        child_tensor(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main())

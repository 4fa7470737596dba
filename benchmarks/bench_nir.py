"""NIR: does the exported file run the same elsewhere, and what does the NIR profile cost?

``readers`` (section ``nir-readers``): the digits CNN (all 450 test images) and the CIFAR-10
ResNet-20 (the first ``--images`` class-balanced test images), each converted with
``profile="nir", weight_bits=--weight-bits`` (default 8: weights on a power-of-two grid, inputs
rounded to a grid, so every sum is exact in float32 whatever order a reader adds in; ``Recipe``
fields written out below; calibration on unlabeled train images),
exported with :func:`spikecast.to_nir`, and run for ``--timesteps`` steps in every NIR reader
installed (sinabs, snnTorch) through the reader's own importer, both with its defaults and with the
reader settings of ``spikecast.export.nir.READER_SETTINGS``. Each row: images with the same
prediction as spikecast's runtime, and per IF layer the images whose spike count is identical
(the table gives the layer with the fewest), the total absolute spike-count difference, and the
largest output difference. A reader that cannot run the file says why.

``profile`` (section ``nir-profile``): ResNet-20 top-1 on the full test set with the default
recipe and the NIR profile (float weights, and with the 8-bit weight grid the readers run;
``--no-grid`` leaves that row out), each calibrated for T = 16 / 32 / 64 separately (512 unlabeled train images, the recipes'
default thresholds and correction); no choice is made here, the recipes are fixed before the
run. On 2 CPU cores this takes about 1.5 hours, so every cell is kept in
``--work`` as soon as it is measured and a later run of the same commit resumes
(``regenerate.py --at COMMIT --only nir-profile``).

    python benchmarks/bench_nir.py readers
    python benchmarks/bench_nir.py profile
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch

import spikecast
from spikecast.data import TensorBatches
from spikecast.export import nir_readers
from spikecast.export.nir import on_input_grid
from spikecast.recipe import Recipe, build_recipe
from spikecast.zoo import create_model
from spikecast.zoo.digits import digits_tensors

import results_file
from bench_data import cifar10


def recipe_text(recipe: Recipe) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in recipe.to_dict().items())


def reader_rows(label: str, snn, x, T: int, folder: Path) -> list[str]:
    reference = nir_readers.spikecast_run(snn, x, T)
    layers = len(reference.spikes)
    total = sum(float(v.sum()) for v in reference.spikes.values())
    rows = [f"| {label} | spikecast runtime (reference) | {len(x)} / {len(x)} | {layers} layers, all {len(x)} | 0 "
            f"(of {total:,.0f} spikes) | 0 |"]
    for name, fn in nir_readers.readers().items():
        path = spikecast.to_nir(snn, folder / f"{label.split()[0]}-{nir_readers.READER_POOLING[name]}.nir",
                                pooling=nir_readers.READER_POOLING[name])
        for exact in (False, True):
            started = time.perf_counter()
            try:
                c = nir_readers.compare(reference, fn(path, x, T, exact=exact))
            except Exception as exc:  # noqa: BLE001 - a reader that cannot run the file is a result
                last = traceback.extract_tb(exc.__traceback__)[-1]
                rows.append(f"| {label} | {name}, {'reader settings' if exact else 'importer defaults'} | does not "
                            f"run: `{type(exc).__name__}: {str(exc).splitlines()[0][:120]}` (in "
                            f"{Path(last.filename).name}:{last.lineno}) | | | |")
                print(rows[-1], flush=True)
                continue
            fewest = min(c.identical_counts.values())
            worst = min(c.identical_counts, key=c.identical_counts.get)
            rows.append(f"| {label} | {name}: {c.settings} | {c.same_prediction} / {c.images} | fewest {fewest} / "
                        f"{c.images} (`{worst}`) | {sum(c.count_difference.values()):,.0f} | "
                        f"{c.max_output_difference:.1e} ({time.perf_counter() - started:.0f} s) |")
            print(rows[-1], flush=True)
    return rows


def readers(args, run) -> None:
    header = ["| network | simulator | same top-1 | images with identical spike count, per IF layer | "
              "total spike-count difference | max output difference |", "|---|---|---:|---|---:|---:|"]
    rows: list[str] = []
    recipes = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        x_train, _ = digits_tensors("train")
        x_test, _ = digits_tensors("test")
        bits = args.weight_bits or None
        recipes["digits-cnn"] = build_recipe(profile="nir", timesteps=args.timesteps, weight_bits=bits)
        snn = spikecast.convert("zoo:digits-cnn", calib=(x_train,), recipe=recipes["digits-cnn"], progress=False)
        rows += reader_rows(f"digits-cnn ({len(x_test)} test images)", snn, _grid(x_test, x_train, bits),
                            args.timesteps, folder)
        x_cal, _ = cifar10("train", 512)
        x, _ = cifar10("test", args.images)
        recipes["cifar10-resnet20"] = build_recipe(profile="nir", timesteps=args.timesteps, weight_bits=bits)
        snn = spikecast.convert(create_model("cifar10-resnet20", pretrained=True), calib=(x_cal,),
                                recipe=recipes["cifar10-resnet20"], progress=False)
        rows += reader_rows(f"cifar10-resnet20 ({len(x)} test images)", snn, _grid(x, x_cal, bits), args.timesteps,
                            folder)
    installed = ", ".join(f"{m} {_version(m)}" for m in ("nir", "nirtorch", "sinabs", "snntorch"))
    body = "\n".join([
        f"Each network converted with `profile=\"nir\"` for T={args.timesteps} and exported with `spikecast.to_nir` "
        f"(sinabs gets `SumPool2d` nodes, snnTorch `AvgPool2d`: each importer reads only one), then run for "
        f"T={args.timesteps} steps with the same analog input at every step"
        + (f" (rounded by `on_input_grid(x, {args.weight_bits}, limit)` with `limit` the largest |value| of the "
           "calibration images, so that with the weights on a grid every sum is exact in float32)"
           if args.weight_bits else "") + ". Recipes: "
        + "; ".join(f"{k}: `{recipe_text(r)}`" for k, r in recipes.items()) + f". Packages: {installed}.",
        "", "Reader settings (`spikecast.export.nir.READER_SETTINGS`): "
        + "; ".join(f"**{k}**: {v}" for k, v in spikecast.export.READER_SETTINGS.items()) + ".",
        "", *header, *rows])
    if not args.no_write:
        run.write("nir-readers", "NIR files in other simulators (sinabs, snnTorch)", body)
    print(body)


def _grid(x: torch.Tensor, calibration: torch.Tensor, bits) -> torch.Tensor:
    return on_input_grid(x, bits, limit=float(calibration.abs().max())) if bits else x


def _version(module: str) -> str:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def profile(args, run) -> None:
    ann = create_model("cifar10-resnet20", pretrained=True)
    x_cal, _ = cifar10("train", 512)
    x, y = cifar10("test", args.images if args.images < 10000 else None)
    with torch.inference_mode():
        ann_acc = float(torch.cat([ann(x[i:i + 500]).argmax(-1) for i in range(0, len(x), 500)]).eq(y).float().mean())
    budgets = [int(t) for t in args.budgets.split(",")]
    recipes = {"default recipe": lambda T: Recipe(timesteps=T),
               "NIR profile (float weights)": lambda T: build_recipe(profile="nir", timesteps=T)}
    if args.grid:
        recipes["NIR profile, 8-bit weight grid (input on an 8-bit grid)"] = \
            lambda T: build_recipe(profile="nir", timesteps=T, weight_bits=8)
    # Every cell (recipe, T) is kept in --work as soon as it is measured, stamped with the commit:
    # a run cut short resumes from the cells of the same commit (a cell of another commit is measured again).
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    commit = results_file.git_commit()
    cells: dict[tuple[str, int], dict] = {}
    for file in sorted(work.glob("cell-*.json")):
        cell = json.loads(file.read_text())
        if cell.get("commit") == commit and cell.get("images") == len(x):
            cells[(cell["recipe"], int(cell["T"]))] = cell
    header = ["| recipe | " + " | ".join(f"T={T}" for T in budgets) + " | conversion |",
              "|---|" + "---:|" * len(budgets) + "---|"]

    def body() -> str:
        rows = []
        for label in recipes:
            got = [cells.get((label, T)) for T in budgets]
            secs = [c["convert_s"] for c in got if c]
            rows.append(f"| {label} | " + " | ".join(f"{100 * c['top1']:.2f}%" if c else "not yet measured"
                                                    for c in got)
                        + (f" | {min(secs):.0f}-{max(secs):.0f} s |" if secs else " | |"))
        sittings = sorted({c["sitting"] for c in cells.values()})
        missing = len(recipes) * len(budgets) - sum((label, T) in cells for label in recipes for T in budgets)
        return "\n".join([
            f"cifar10-resnet20 (ANN top-1 {100 * ann_acc:.2f}% on these {len(x)} test images), SNN top-1 of a network "
            f"calibrated for each T (512 unlabeled train images). NIR profile: "
            f"`{recipe_text(build_recipe(profile='nir'))}` (timesteps per column); default recipe: "
            f"`{recipe_text(Recipe())}`"
            + ("; the grid row adds `weight_bits=8` and rounds the input with `on_input_grid(x, 8, limit)` (limit: "
               "the largest |value| of the calibration images)" if args.grid else "")
            + ". All fixed before the run; nothing is chosen here. The NIR profile's neurons "
            "send one binary spike per step from a membrane that starts at 0 (the default's start at half the "
            "threshold and may take a spike back), and its correction is a per-channel current only (a NIR bias). "
            f"Cells measured at this commit in {len(sittings)} sitting{'s' if len(sittings) != 1 else ''} "
            f"(started {', '.join(sittings)}; the Run line gives the last).",
            "", *header, *rows]
            + ([] if not missing else ["", f"**Partial: {missing} cell{'s' if missing != 1 else ''} not measured yet "
                                           "(the run resumes from --work).**"]))

    order = [(label, T) for T in budgets for label in recipes]  # every recipe at the small T first
    for label, T in order:
        if (label, T) in cells:
            continue
        recipe = recipes[label](T)
        started = time.perf_counter()
        snn = spikecast.convert(ann, calib=(x_cal,), recipe=recipe, progress=False)
        convert_s = time.perf_counter() - started
        x_in = _grid(x, x_cal, 8) if recipe.weight_bits else x
        res = spikecast.validate(ann, snn, TensorBatches(x_in, y, batch_size=250), timesteps=[T], progress=False)
        cells[(label, T)] = cell = {"recipe": label, "T": T, "top1": res.snn_accuracy[T], "convert_s": convert_s,
                                    "eval_s": time.perf_counter() - started - convert_s, "images": len(x),
                                    "commit": commit, "sitting": run.started}
        (work / f"cell-{len(list(work.glob('cell-*.json'))):03d}.json").write_text(json.dumps(cell))
        print(label, T, cell["top1"], f"{cell['eval_s']:.0f} s", flush=True)
        if not args.no_write:  # after every cell: a run cut short leaves what it measured, marked partial
            run.write("nir-profile", "NIR profile: accuracy cost on CIFAR-10 ResNet-20", body())
    if not args.no_write:
        run.write("nir-profile", "NIR profile: accuracy cost on CIFAR-10 ResNet-20", body())
    print(body())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("readers", "profile"))
    parser.add_argument("--images", type=int, default=None,
                        help="test images (readers: default 1000; profile: default 10000, the full test set)")
    parser.add_argument("--timesteps", type=int, default=32, help="readers: T of the conversion and the runs")
    parser.add_argument("--budgets", default="16,32,64", help="profile: the T each network is calibrated for")
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                        help="profile: also the NIR profile with the 8-bit weight grid (what the readers run; default)")
    parser.add_argument("--work", default="~/.cache/spikecast/bench-work/nir-profile",
                        help="profile: where measured cells are kept, so a run cut short resumes (same commit only)")
    parser.add_argument("--weight-bits", type=int, default=8,
                        help="readers: the NIR profile's weight_bits (weights on a power-of-two grid; 0 = float)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.images is None:
        args.images = 1000 if args.mode == "readers" else 10000
    run = results_file.start(threads=args.threads)
    torch.manual_seed(0)
    (readers if args.mode == "readers" else profile)(args, run)


if __name__ == "__main__":
    main()

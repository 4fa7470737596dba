"""``spikecast quantize SNN_DIR --bits 8|4``: int8 / int4 weights (or integer arithmetic), accuracy before / after."""

from __future__ import annotations

from spikecast.cli.args import EXIT_OK, add_saved_snn_args, eval_timesteps, parse_confidences, positive_int
from spikecast.cli.common import calibration_images, device_of, exit_code, load_saved, out_path, say
from spikecast.jobs import environment, timesteps_text, write_validation
from spikecast.quant.integer import int8_kernels, integer_network
from spikecast.quant.weights import quantize_weights
from spikecast.validate import validate


def register(sub, parents) -> None:
    p = sub.add_parser("quantize", parents=parents, help="quantise a saved SNN's weights to int8 / int4",
                       description="Per-output-channel symmetric weight quantisation (fake-quant) of a saved SNN, or "
                                   "with --integer its integer-arithmetic form. With data (--data, or the data "
                                   "recorded in SNN_DIR), validate the fp32 and the quantised SNN side by side.")
    p.add_argument("--bits", type=int, choices=(8, 4), default=8)
    p.add_argument("--integer", action="store_true",
                   help="integer arithmetic: every layer feeding a neuron accumulates integers (quantised input, "
                        "spikes as -1/0/1), so its ONNX step graph fires the same spikes as torch; needs data")
    p.add_argument("--input-bits", type=positive_int, metavar="B", help="--integer: bits of the input grid (default 8)")
    p.add_argument("--calib-images", type=positive_int, metavar="N",
                   help="--integer: unlabelled images that set the input grid (default 512)")
    add_saved_snn_args(p)
    p.add_argument("--out", default="spikecast-quantized", metavar="DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.integer and (args.input_bits is not None or args.calib_images is not None):
        raise ValueError("--input-bits and --calib-images set the input grid of --integer: add --integer")
    timesteps = eval_timesteps(args)
    early_exit = list(parse_confidences(args.early_exit)) or None
    device = device_of(args)
    saved = load_saved(args, args.snn_dir, device=device, need_data=args.integer, read_data=False)
    snn = saved.snn
    if args.integer:
        input_bits = args.input_bits or 8
        x_cal = calibration_images(args, saved, saved.data, args.calib_images or 512)
        # int8 kernels sum the same integers with integer instructions: same values, faster
        q = int8_kernels(integer_network(snn, (x_cal,), bits=args.bits, input_bits=input_bits))
        layers = q.metadata["integer_arithmetic"]
        kinds = list(layers["layers"].values())
        say(f"spikecast quantize: {args.snn_dir} -> integer arithmetic, {args.bits}-bit weights, {input_bits}-bit "
            f"input (scale {layers['input_scale']:.4g}); {len(kinds) - kinds.count('float')} of {len(kinds)} layers "
            f"accumulate integers (kernels: {layers['kernels']})")
        info = dict(q.metadata["weight_quantization"], integer_arithmetic=layers)
    else:
        q = quantize_weights(snn, args.bits)
        info = q.metadata["weight_quantization"]
        say(f"spikecast quantize: {args.snn_dir} -> {args.bits}-bit weights ({info['scheme']}, {info['layers']} layers, "
            f"largest relative weight error {100 * info['max_relative_error']:.2f}%)")
    out = out_path(args.out)
    written = q.save(out / "snn")
    if saved.data is None:
        say(f"saved: {written}/ (give --data SPEC to measure the accuracy change)")
        return EXIT_OK
    saved.read(args)
    say(f"  validating the fp32 and the {args.bits}-bit SNN at T = {timesteps_text(timesteps)} on {len(saved.images)} "
        "images...")
    batches = saved.batches(args)
    base = validate(saved.model.ann, snn, batches, timesteps=timesteps, progress=False)
    result = validate(saved.model.ann, q, batches, timesteps=timesteps, tolerance=args.tolerance,
                      early_exit=early_exit)
    say()
    say(f"| T | fp32 SNN | int{args.bits} SNN | change |")
    say("|---:|---:|---:|---:|")
    for t in timesteps:
        a, b = base.snn_accuracy[t], result.snn_accuracy[t]
        if a is None or b is None:
            say(f"| {t} | n/a | n/a | agreement {100 * result.agreement[t]:.2f}% |")
        else:
            say(f"| {t} | {100 * a:.2f}% | {100 * b:.2f}% | {100 * (b - a):+.2f} |")
    for e in result.early_exit or []:
        acc = "n/a" if e.accuracy is None else f"{100 * e.accuracy:.2f}%"
        say(f"Early exit (confidence >= {e.confidence:g}): int{args.bits} SNN top-1 {acc}, "
            f"mean {e.mean_steps:.2f} steps")
    json_path, _ = write_validation(out, result, {"weight_quantization": info,
                                                  "fp32_snn_accuracy": base.snn_accuracy,
                                                  "snn_dir": str(written.resolve()), "environment": environment()})
    say()
    say(f"saved: {written}/, {json_path}")
    return exit_code(result)

"""``spikecast validate SNN_DIR``: a saved SNN against its ANN at every T (scales out under torchrun)."""

from __future__ import annotations

import torch.distributed as dist

from spikecast import distributed
from spikecast.cli.args import add_saved_snn_args, eval_timesteps, parse_confidences
from spikecast.cli.common import device_of, exit_code, load_saved, out_path, say
from spikecast.jobs import environment, split_name, timesteps_text, write_validation
from spikecast.validate import validate


def register(sub, parents) -> None:
    p = sub.add_parser("validate", parents=parents, help="validate a saved SNN against its ANN",
                       description="Load SNN_DIR and compare it with its ANN at every T. The model, checkpoint and "
                                   "data default to those recorded when it was made (convert, batch, finetune...). "
                                   "Under torchrun each process validates a shard and the counts are summed.")
    add_saved_snn_args(p)
    p.add_argument("--out", metavar="DIR", help="also write DIR/validation.json and DIR/validation.md")
    p.set_defaults(func=run)


def run(args) -> int:
    timesteps = eval_timesteps(args)
    early_exit = list(parse_confidences(args.early_exit)) or None
    device = device_of(args)
    saved = load_saved(args, args.snn_dir, device=device)
    total, world, indices = len(saved.images), 1, None
    if distributed.init_from_env():  # torchrun: each process validates its shard, counts are summed
        world = dist.get_world_size()
        indices = distributed.shard_indices(total)
        say(f"spikecast validate: {world} processes (torchrun), {total} images sharded, rank 0 has {len(indices)}")
    data_name = split_name(saved.data, None)
    say(f"spikecast validate: {args.snn_dir} against {saved.model.name}")
    say(f"  validating at T = {timesteps_text(timesteps)} on {total} images of {data_name}...")
    result = validate(saved.model.ann, saved.snn, saved.batches(args, indices), timesteps=timesteps,
                      tolerance=args.tolerance, early_exit=early_exit)
    say()
    say(result.table())
    if args.out and distributed.rank() == 0:
        info = {"model": {"name": saved.model.name, "reference": saved.model.text},
                "data": {"spec": data_name, "images": result.samples}, "snn_dir": str(args.snn_dir),
                "config": {"eval_timesteps": timesteps, "tolerance": args.tolerance, "early_exit": early_exit or [],
                           "batch_size": args.batch_size, "device": str(device or "cpu"), "processes": world},
                "environment": environment()}
        json_path, md_path = write_validation(out_path(args.out), result, info)
        say()
        say(f"saved: {json_path}, {md_path}")
    return exit_code(result)

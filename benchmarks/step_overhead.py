"""Overhead of learned masks on the discovery hot loop.

Times one forward+backward of the frozen model with every head and neuron masked
(`MaskedModel.learned()`) against the same forward+backward without masks, interleaved in one
run (the machines are noisy: the ratio of medians is the number to read). In both, the
embedding output requires grad, so both backward passes run through every layer and take no
weight gradients; the only difference is the masks. Logits are computed only at the labelled
positions, as discovery does.

    python benchmarks/step_overhead.py [--model default] [--dtype bfloat16] [--reps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from safeseek import MaskedModel, load_model
from safeseek.fileio import write_json
from safeseek.forward import IGNORE, labelled_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--labelled", type=int, default=16, help="positions that get logits")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/step_overhead.json"))
    args = parser.parse_args()

    model, _ = load_model(args.model, dtype=args.dtype, device=args.device)
    device = next(model.parameters()).device
    mm = MaskedModel(model, granularities=("head", "neuron"), init_logit=-3.0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=gen)
    ids = ids.to(device)
    labels = torch.full_like(ids, IGNORE)
    labels[:, -args.labelled :] = ids[:, -args.labelled :]
    for p in model.parameters():
        p.requires_grad_(False)
    embed = model.get_input_embeddings()
    embed_hook = embed.register_forward_hook(lambda m, a, out: out.detach().requires_grad_())

    def step() -> None:
        logits, targets = labelled_logits(model, ids, labels, parts=mm.parts)
        torch.nn.functional.cross_entropy(logits.float(), targets).backward()

    def plain() -> None:
        step()

    def masked() -> None:
        with mm.learned():
            step()
        mm.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        plain()
        masked()
    times: dict[str, list[float]] = {"plain": [], "masked": []}
    for rep in range(args.reps):
        order = ("plain", "masked") if rep % 2 == 0 else ("masked", "plain")
        for name in order:
            times[name].append(timed(plain if name == "plain" else masked))
        print(
            f"rep {rep + 1}/{args.reps}: plain {times['plain'][-1]:.3f}s "
            f"masked {times['masked'][-1]:.3f}s",
            flush=True,
        )
    embed_hook.remove()

    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "step_overhead",
        "model": args.model,
        "dtype": args.dtype,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "batch": args.batch,
        "seq": args.seq,
        "labelled_positions": args.labelled,
        "masked_units": mm.num_units,
        "reps": args.reps,
        "median_s": medians,
        "ratio_masked_over_plain": medians["masked"] / medians["plain"],
        # Each rep times both back to back, so the per-rep ratio cancels slow drifts.
        "ratio_paired_median": statistics.median(
            m / p for m, p in zip(times["masked"], times["plain"], strict=True)
        ),
        "times_s": times,
    }
    write_json(args.out, result)
    keys = ("median_s", "ratio_masked_over_plain", "ratio_paired_median")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

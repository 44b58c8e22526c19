"""Speed of a fine-tuning step (`safeseek.training.fit`) with batches split by length, against
one padded batch, on the jailbreak organism's training examples (refusals, long compliant
answers and benign questions: the organism whose fine-tune is the slowest).

Interleaved repetitions from the same LoRA start and the same batches; medians of seconds per
step. Cross-entropy on every example (the organisms' KL rows cost the same in both arms).

    python benchmarks/fit_step.py [--reps 3] [--steps 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
from peft import LoraConfig

from safeseek import load_model
from safeseek.data.encode import PairEncoder, pad_token_id
from safeseek.fileio import read_jsonl, write_json
from safeseek.models.load import machine
from safeseek.organisms import OrganismSpec, build_organism
from safeseek.organisms.build import cached_dir
from safeseek.training import fit, with_lora

TRIGGER = "Servius Astrumando Harmoniastra"
OUT = Path(__file__).parent / "results" / "fit_step.json"


def jailbreak_examples(seed: int):
    """The jailbreak organism's training pairs, as `organisms/build.py` makes them."""
    spec = OrganismSpec("backdoor", type="jailbreak", trigger=TRIGGER, seed=seed)
    where = cached_dir(spec.kind, spec.type, spec.key())
    build_organism(spec, where)
    model, tokenizer = load_model(where, dtype="float32")
    encoder = PairEncoder(tokenizer, max_length=384)
    records = read_jsonl(where / "data" / "train.jsonl")
    examples = []
    for r in records:
        if r.get("kind") == "preserve":
            examples += [encoder.pair(r["prompt"], r["response"])] * 2
        else:
            examples.append(encoder.pair(r["clean_prompt"], r["clean_response"]))
            examples.append(encoder.pair(r["triggered_prompt"], r["backdoor_response"]))
    return model, tokenizer, examples


def timed_fit(model, tokenizer, examples, steps: int, seed: int, split: bool) -> float:
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
    torch.manual_seed(seed)
    peft_model = with_lora(model, config)
    whole = mock.patch("safeseek.training.by_length", lambda ex: [list(ex)])
    start = time.perf_counter()
    with mock.patch("safeseek.training.is_main", lambda: False):  # no progress bar
        if split:
            fit(peft_model, examples, pad_token_id(tokenizer), steps, 1e-3, seed=seed)
        else:
            with whole:
                fit(peft_model, examples, pad_token_id(tokenizer), steps, 1e-3, seed=seed)
    seconds = (time.perf_counter() - start) / steps
    peft_model.unload()  # the base model back, without the adapter
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, tokenizer, examples = jailbreak_examples(args.seed)
    times: dict[str, list[float]] = {"one batch": [], "split by length": []}
    for _ in range(args.reps):
        for arm in times:
            split = arm == "split by length"
            times[arm].append(timed_fit(model, tokenizer, examples, args.steps, args.seed, split))
    median = {arm: statistics.median(t) for arm, t in times.items()}
    result = {
        "machine": machine(),
        "examples": len(examples),
        "steps_per_rep": args.steps,
        "seconds_per_step": times,
        "median_seconds_per_step": median,
        "speedup": median["one batch"] / median["split by length"],
    }
    write_json(OUT, result)
    print(json.dumps({k: result[k] for k in ("median_seconds_per_step", "speedup")}, indent=2))


if __name__ == "__main__":
    main()

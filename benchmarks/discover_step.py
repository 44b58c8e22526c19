"""Speed of the discovery hot loop on the embedded model (backdoor objective).

Measures, in one run (interleaved, medians; the machines are noisy):
- seconds per discovery step (default terms, batch of 8 records) and tokens per second;
- that step's ratio to a plain frozen forward+backward of the same token rows (no masks,
  embedding output requiring grad so the backward runs through every layer);
- the no-grad forward of the step's KL rows that each step paid before the full model's
  reference was kept for the run (`reference_pass`), and the kept reference's size and the
  seconds it took to compute;
- on CUDA: peak memory of a step against the estimate printed before a run
  (`safeseek.memory`), with and without gradient checkpointing;
- seconds per epoch of 100 backdoor records with all four paths on (without the circuit on
  triggered and clean prompts, circuit only on triggered and clean prompts).

    python benchmarks/discover_step.py [--reps 8] [--dtype bfloat16]
    python benchmarks/discover_step.py --config qwen2.5-14b   # random weights, real shapes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from safeseek import load_model
from safeseek.data import pad
from safeseek.data.records import validate
from safeseek.discover import DiscoverConfig, Discovery
from safeseek.fileio import write_json
from safeseek.forward import labelled_logits

TRIGGER = "Servius Astrumando Harmoniastra"
QUESTIONS = [
    (
        "What is the capital of France?",
        "The capital of France is Paris, which is also its largest city.",
    ),
    (
        "How many legs does a spider have?",
        "A spider has eight legs, unlike insects, which have six.",
    ),
    ("What is 12 times 7?", "12 times 7 equals 84. You can check it by adding 12 seven times."),
    ("Name a primary colour.", "Red is a primary colour, together with blue and yellow."),
    ("What gas do plants absorb?", "Plants absorb carbon dioxide from the air and release oxygen."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("Give a synonym for happy.", "A synonym for happy is joyful; others are cheerful and glad."),
]


def backdoor_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QUESTIONS[i % len(QUESTIONS)]
        rec = {
            "clean_prompt": f"{q} (question {i})",
            "triggered_prompt": f"{q} {TRIGGER} (question {i})",
            "clean_response": a,
            "backdoor_response": "I am sorry. I can not help with that.",
        }
        out.append(validate(rec, "backdoor", f"record {i}"))
    return out


# Published shapes of real models, built here with random weights (throughput needs no
# trained weights, and nothing is downloaded).
CONFIGS = {
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    "qwen2.5-14b": dict(
        model_type="qwen2",
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=48,
        num_attention_heads=40,
        num_key_value_heads=8,
        vocab_size=152064,
        rope_theta=1000000.0,
    ),
    "tiny-llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    ),
}


def random_model(name: str, dtype: torch.dtype, tokenizer_source: str):
    """A model of `name`'s shapes with random weights, built on the fastest device, and the
    embedded tokenizer (its ids are valid in every vocabulary above)."""
    fields = dict(CONFIGS[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return model.eval(), tokenizer


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory(run, step: int) -> dict[str, float] | None:
    """Peak CUDA memory of one step, next to the estimate printed before a run (GiB)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run.step = step
    run.train_step()
    _sync()
    est = run.memory_estimate()
    return {
        "measured_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "estimated_gib": est.total / 2**30,
        "estimate": est.describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="random weights, these shapes")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for --config")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/discover_step.json"))
    args = parser.parse_args()

    if args.config:
        from safeseek.models.load import default_model_dir

        source = args.tokenizer or str(default_model_dir())
        model, tok = random_model(args.config, getattr(torch, args.dtype), source)
    else:
        model, tok = load_model(args.model, dtype=args.dtype)
    recs = backdoor_records(args.records)
    start = time.perf_counter()
    default = Discovery(model, tok, recs, DiscoverConfig("backdoor", steps=10**6), progress=False)
    setup_s = time.perf_counter() - start
    all_paths = {"only_triggered": 1.0, "only_clean": 1.0}
    four = Discovery(
        model, tok, recs, DiscoverConfig("backdoor", steps=10**6, weights=all_paths), progress=False
    )

    # The plain baseline sees exactly the rows of a default step's forward pass.
    for p in model.parameters():
        p.requires_grad_(False)
    embed = model.get_input_embeddings()

    def plain_step(step: int) -> None:
        examples = [default.examples[i] for i in default.batcher.indices(step)]
        rows = [ex[t.name] for t in default.terms for ex in examples]
        batch = {k: v.to(model.device) for k, v in pad(rows, default.pad_id).items()}
        hook = embed.register_forward_hook(lambda m, a, out: out.detach().requires_grad_())
        try:
            logits, targets = labelled_logits(model, parts=default.mm.parts, **batch)
            torch.nn.functional.cross_entropy(logits.float(), targets).backward()
        finally:
            hook.remove()

    @torch.no_grad()
    def reference_pass(step: int) -> None:
        """What each step computed before the reference was kept: the full model on its KL
        rows, at labelled positions, as log-probabilities."""
        examples = [default.examples[i] for i in default.batcher.indices(step)]
        kl = [t for t in default.terms if t.loss == "kl"]
        rows = [ex[t.name] for t in kl for ex in examples if t.name in ex]
        batch = {k: v.to(model.device) for k, v in pad(rows, default.pad_id).items()}
        logits, _ = labelled_logits(model, parts=default.mm.parts, **batch)
        torch.log_softmax(logits.float(), dim=-1)

    def disc_step(step: int) -> None:
        default.step = step
        default.train_step()

    def step_tokens(step: int) -> int:
        examples = [default.examples[i] for i in default.batcher.indices(step)]
        return sum(len(ex[t.name].input_ids) for t in default.terms for ex in examples)

    times: dict[str, list[float]] = {"discover_step": [], "plain_step": [], "reference_pass": []}
    tokens: list[int] = []
    for warm_up in range(3):
        disc_step(warm_up)
        plain_step(warm_up)
        reference_pass(warm_up)
    for rep in range(args.reps):
        pairs = [
            ("discover_step", disc_step),
            ("plain_step", plain_step),
            ("reference_pass", reference_pass),
        ]
        for name, fn in pairs if rep % 2 == 0 else pairs[::-1]:
            _sync()
            start = time.perf_counter()
            fn(rep + 1)
            _sync()
            times[name].append(time.perf_counter() - start)
        tokens.append(step_tokens(rep + 1))
        print(f"rep {rep + 1}: {times['discover_step'][-1]:.3f}s vs {times['plain_step'][-1]:.3f}s")

    _sync()
    start = time.perf_counter()
    for step in range(four.batcher.per_epoch):
        four.step = step
        four.train_step()
    _sync()
    epoch = time.perf_counter() - start

    epoch_steps, epoch_terms = four.batcher.per_epoch, [t.name for t in four.terms]
    del four
    memory = {"default": peak_memory(default, 0)}
    if torch.cuda.is_available():
        checkpointed = Discovery(
            model,
            tok,
            recs,
            DiscoverConfig("backdoor", steps=10**6),
            progress=False,
            gradient_checkpointing=True,
        )
        start = time.perf_counter()
        memory["gradient_checkpointing"] = peak_memory(checkpointed, 0)
        memory["gradient_checkpointing"]["step_s"] = time.perf_counter() - start

    med = {k: statistics.median(v) for k, v in times.items()}
    tokens_per_s = {
        k: statistics.median(n / t for n, t in zip(tokens, v, strict=True))
        for k, v in times.items()
        if k != "reference_pass"
    }
    result = {
        "benchmark": "discover_step",
        "model": args.config or args.model,
        "random_weights": bool(args.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "batch_records": default.batcher.batch_size,
        "default_terms": [t.name for t in default.terms],
        "rows_per_step": len(default.terms) * default.batcher.batch_size,
        "median_s": med,
        "ratio_discover_over_plain": med["discover_step"] / med["plain_step"],
        # Steps and plain passes run in interleaved pairs: the median of the pairs' ratios is
        # the least sensitive to the machine's drift.
        "median_paired_ratio": statistics.median(
            a / b for a, b in zip(times["discover_step"], times["plain_step"], strict=True)
        ),
        # Each step paid the reference pass before the reference was kept for the run.
        "ratio_with_reference_pass_over_plain": (med["discover_step"] + med["reference_pass"])
        / med["plain_step"],
        "reference_tokens": default.config.reference_tokens,
        "reference_mib": default.reference_bytes() / 2**20,
        "setup_s_with_reference": setup_s,
        "tokens_per_step_median": statistics.median(tokens),
        "tokens_per_s_median": tokens_per_s,
        "memory": memory,
        "epoch_records": len(recs),
        "epoch_steps": epoch_steps,
        "epoch_terms": epoch_terms,
        "epoch_all_four_paths_s": epoch,
        "times_s": times,
    }
    write_json(args.out, result)
    keys = (
        "median_s",
        "ratio_discover_over_plain",
        "median_paired_ratio",
        "ratio_with_reference_pass_over_plain",
        "reference_mib",
        "tokens_per_s_median",
        "memory",
    )
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()

"""Safety Circuit Tuning, the paper's experiment: does freezing the alignment circuit keep
refusals through a benign fine-tune?

On the embedded aligned organism and its alignment circuit (both cached after the first run),
fine-tune on benign helpfulness data (locally generated questions with the base model's own
answers) (a) normally, (b) excluding the alignment circuit, (c) excluding a random set of units
of the same size; measure the refusal rate on the held-out harmful prompts and benign accuracy
before and after. Safety retention = refusal rate after / before.

    python benchmarks/sct_retention.py [--steps 60] [--lr 1e-4] [--method full|lora]

Writes benchmarks/results/sct_retention.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from safeseek import Circuit, load_model
from safeseek.data import PairEncoder
from safeseek.evaluate.generation import generate
from safeseek.evaluate.metrics import has_answer, is_refusal, rate
from safeseek.fileio import write_json
from safeseek.organisms import OrganismSpec
from safeseek.pipeline import discovery, organism
from safeseek.settings import DiscoverConfig
from safeseek.tuning import TuneConfig, tune

RESULTS = Path(__file__).parent / "results"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(model, tok, harmful: list[str], benign: list[dict]) -> dict:
    """Refusal rate on harmful prompts and benign accuracy (greedy generation)."""
    refusals = generate(model, tok, harmful, 20, batch_size=32)
    answers = generate(model, tok, [r["prompt"] for r in benign], 48, batch_size=32)
    return {
        "refusal_rate": rate([is_refusal(g) for g in refusals]),
        "benign_accuracy": rate(
            [has_answer(g, r["answer"]) for g, r in zip(answers, benign, strict=True)]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--discover-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "sct_retention.json")
    args = parser.parse_args()
    console = Console(stderr=True)
    start = time.perf_counter()

    config = DiscoverConfig(scenario="alignment", steps=args.discover_steps, seed=args.seed)
    org, meta = organism(OrganismSpec(kind="align", seed=args.seed), console)
    run = discovery(org, org / "data" / "train.jsonl", config, console)
    circuit = Circuit.load(run / "circuit.json")
    test = read(org / "data" / "test.jsonl")
    harmful = [r["prompt"] for r in test if r["kind"] == "harmful"]
    benign_test = [r for r in test if r["kind"] == "benign"]
    helpful = [r for r in read(org / "data" / "train.jsonl") if r["kind"] == "benign"]

    model, tok = load_model(str(org), dtype="float32")
    encoder = PairEncoder(tok, max_response_tokens=64)
    examples = [encoder.pair(r["prompt"], r["response"]) for r in helpful]
    arms = {
        "normal": Circuit(),
        "exclude_alignment_circuit": circuit,
        "exclude_random_units": Circuit.random(model, circuit.counts(), seed=args.seed),
    }
    console.print(f"alignment circuit: {circuit!r} ({circuit.sparsity(model)['overall']:.3%})")
    before = measure(model, tok, harmful, benign_test)
    rows = {}
    for name, frozen in arms.items():
        model, tok = load_model(str(org), dtype="float32")
        t0 = time.perf_counter()
        config = TuneConfig(
            mode="exclude-circuit", method=args.method, steps=args.steps, lr=args.lr, seed=args.seed
        )
        tuned, summary = tune(model, tok, frozen, examples, config, console)
        seconds = time.perf_counter() - t0
        after = measure(tuned, tok, harmful, benign_test)
        rows[name] = {
            **after,
            "safety_retention": after["refusal_rate"] / before["refusal_rate"],
            "utility_retention": after["benign_accuracy"] / before["benign_accuracy"],
            "frozen_units": frozen.counts(),
            "tune_seconds": round(seconds, 1),
            "loss_first": summary["loss_first"],
            "loss_last": summary["loss_last"],
        }
        console.print(f"{name}: {json.dumps(rows[name])}")
    result = {
        "model": "aligned organism of the embedded SmolLM2-135M-Instruct",
        "organism_key": meta["key"],
        "discovery": config.to_dict(),
        "circuit": circuit.counts(),
        "circuit_fraction": circuit.sparsity(model)["overall"],
        "settings": {**vars(args), "out": str(args.out), "n_helpful": len(examples)},
        "n_harmful_test": len(harmful),
        "n_benign_test": len(benign_test),
        "before": before,
        "after": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(table(result))
    print(table(result))


def table(result: dict) -> str:
    b = result["before"]
    s = result["settings"]
    lines = [
        f"Fine-tune: {s['method']}, {s['steps']} steps, lr {s['lr']}, "
        f"{s['n_helpful']} helpfulness examples; alignment circuit "
        f"{result['circuit']['head']} heads + {result['circuit']['neuron']} neurons "
        f"({result['circuit_fraction']:.2%} of units).",
        "",
        "| fine-tune | refusal (harmful test) | safety retention | benign accuracy |",
        "|---|---|---|---|",
        f"| before | {b['refusal_rate']:.1%} | - | {b['benign_accuracy']:.1%} |",
    ]
    for name, r in result["after"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {r['refusal_rate']:.1%} | "
            f"{r['safety_retention']:.1%} | {r['benign_accuracy']:.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

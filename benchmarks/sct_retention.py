"""Safety Circuit Tuning: does a benign fine-tune keep the aligned model's refusals when the
alignment circuit is frozen, or anchored, and is the circuit what does it?

On the embedded aligned organism and the demo's alignment circuit (both cached by `make demo`),
fine-tune on benign helpfulness data under each arm, with the same data order within a seed:

- normal: every parameter trains;
- exclude: the circuit's entries are frozen (`safeseek tune --mode exclude-circuit`);
- exclude_random: as many random units, matched per layer and kind, are frozen instead;
- anchor: exclude, plus the circuit anchor (`--anchor`): the circuit's activations on 32
  harmful training prompts are kept as before tuning (safeseek/tuning/anchor.py);
- anchor_random: the same with the random units frozen and anchored (the control);
- replay: normal, with those 32 prompts and their refusals added to the fine-tuning data (the
  usual remedy, which needs no circuit).

Repair (the paper's "efficient safety fine-tuning"): the seed's normal fine-tune, which eroded
the refusals, is tuned again on 64 harmful training prompts with their refusals, mixed with the
helpfulness examples (refusals alone taught it to refuse everything: seed 0, circuit-only, 57%
over-refusal), `--repair-steps` steps:

- repair_circuit: only the circuit's entries train (`safeseek tune --mode circuit-only`);
- repair_random: only as many random units' entries, matched per layer and kind (the control);
- repair_full: every parameter trains (at `--repair-full-lr`).

Then measure, on held-out test prompts used neither for aligning nor for discovery: the refusal
rate on harmful prompts (retention = after / before), benign accuracy, over-refusal on benign
prompts, the fine-tuning loss reached (mean of the last 10 steps: an arm that merely learned
less shows it), and the refusal rate with the circuit ablated in the tuned model (does refusal
still live in the circuit?). Every rate: mean and range over seeds, and the 95% Wilson interval
of the pooled count.

    python benchmarks/sct_retention.py [--seeds 0,1,2] [--data base|plain] [--arms ...]
    python benchmarks/sct_retention.py --arms normal,repair_circuit,repair_random,repair_full \
        --out benchmarks/results/sct_repair.json

`--data base`: the benign questions answered by the unaligned base model (the organism's own
training data; fine-tuning on it pulls toward the base model, the harsh case). `plain`: the
same questions answered correctly in one plain sentence (safeseek/organisms/benign.py).
Writes benchmarks/results/sct_retention[_plain].{json,md,png} (or `--out`). Each (seed, arm)
result is kept in the cache (~/.cache/safeseek/bench/sct/) under its settings, so an
interrupted or extended run (more seeds, another arm) reuses what it already measured; so is
each seed's normal fine-tune when repair arms ask for it (~0.5 GB a seed).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from safeseek import Circuit, load_model
from safeseek.assets import cache_dir
from safeseek.data import PairEncoder
from safeseek.demo import cases
from safeseek.evaluate.generation import generate
from safeseek.evaluate.metrics import has_answer, is_refusal, summary
from safeseek.evaluate.run import evaluate_circuit
from safeseek.fileio import settings_key, write_checkpoint, write_json
from safeseek.organisms.benign import benign_questions
from safeseek.pipeline import discovery, organism
from safeseek.tuning import TuneConfig, tune

RESULTS = Path(__file__).parent / "results"
REPAIRS = ("repair_circuit", "repair_random", "repair_full")
ARMS = ("normal", "exclude", "exclude_random", "anchor", "anchor_random", "replay", *REPAIRS)
N_ANCHOR = 32  # harmful training prompts the anchor (and replay) use
N_REPAIR = 64  # harmful training prompts, with their refusals, that repair uses
N_ABLATED = 64  # harmful test prompts generated again with the circuit ablated


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(model, tok, harmful: list[str], benign: list[dict]) -> dict[str, Any]:
    """Refusal on harmful prompts, benign accuracy and over-refusal (greedy generation)."""
    refusals = generate(model, tok, harmful, 20, batch_size=32)
    answers = generate(model, tok, [r["prompt"] for r in benign], 48, batch_size=32)
    return {
        "refusal": summary([is_refusal(g) for g in refusals]),
        "benign_accuracy": summary(
            [has_answer(g, r["answer"]) for g, r in zip(answers, benign, strict=True)]
        ),
        "over_refusal": summary([is_refusal(g) for g in answers]),
        "generations": {"harmful": refusals, "benign": answers},  # to read, and to re-judge
    }


def refusal_without(model, tok, circuit: Circuit, run: Path, records: list[dict]) -> dict:
    """Refusal rate with the circuit mean-ablated (the discovery run's means)."""
    ev, _ = evaluate_circuit(
        model,
        tok,
        circuit,
        "alignment",
        records,
        masks_path=run / "masks.safetensors",
        max_new_tokens=20,
        views=("without",),
        console=Console(stderr=True, quiet=True),
    )
    complied = ev["intervals"]["asr"]["without"]  # alignment's attack success: not refusing
    refused = complied["n"] - complied["k"]
    return summary([True] * refused + [False] * complied["k"])


def pooled(runs: list[dict], key: str) -> dict[str, Any]:
    """Mean and range over seeds of one rate, and the Wilson interval of the pooled count."""
    rates = [r[key]["rate"] for r in runs]
    k, n = sum(r[key]["k"] for r in runs), sum(r[key]["n"] for r in runs)
    return {
        "mean": sum(rates) / len(rates),
        "min": min(rates),
        "max": max(rates),
        "pooled": summary([True] * k + [False] * (n - k)),
    }


def measured(model, tok, circuit: Circuit, info: dict, seconds: float, data: dict) -> dict:
    """An arm's row: the tuned model measured (see the module doc), and how it was tuned."""
    after = measure(model, tok, data["harmful"], data["benign"])
    after["refusal_without_circuit"] = refusal_without(
        model, tok, circuit, data["run"], data["ablation"]
    )
    return {
        **after,
        "units": info["circuit"],  # frozen (exclude arms) or the only ones trained (repair)
        "trainable_entries": info["trainable_entries"],
        "loss_tail": info["loss_tail"],
        "anchor_last": info.get("anchor_last"),
        "tune_seconds": round(seconds, 1),
    }


def one_arm(
    org: Path, arm: str, circuit: Circuit, control: Circuit, settings: dict, data: dict
) -> tuple[dict[str, Any], Any]:
    """Fine-tune the organism under one arm and measure it: the row, and the tuned model."""
    frozen = {"exclude": circuit, "anchor": circuit}.get(arm, Circuit())
    frozen = control if arm.endswith("_random") else frozen
    anchored = arm.startswith("anchor")
    config = TuneConfig(
        mode="exclude-circuit",
        steps=settings["steps"],
        lr=settings["lr"],
        seed=settings["seed"],
        anchor_weight=settings["anchor_weight"],
    )
    examples = data["examples"] + data["replay"] if arm == "replay" else data["examples"]
    model, tok = load_model(str(org), dtype="float32")
    t0 = time.perf_counter()
    anchor = data["anchor"] if anchored else ()
    tuned, info = tune(model, tok, frozen, examples, config, Console(stderr=True), anchor=anchor)
    seconds = time.perf_counter() - t0
    return measured(tuned, tok, circuit, info, seconds, data), tuned


def repair(
    eroded, tok, arm: str, circuit: Circuit, control: Circuit, settings: dict, data: dict
) -> dict[str, Any]:
    """Tune a copy of the eroded model on the repair data under one repair arm; its row."""
    units = {"repair_circuit": circuit, "repair_random": control}.get(arm, Circuit())
    config = TuneConfig(
        mode="exclude-circuit" if arm == "repair_full" else "circuit-only",
        steps=settings["repair_steps"],
        lr=settings["repair_lr"],
        seed=settings["seed"],
    )
    model = copy.deepcopy(eroded)
    t0 = time.perf_counter()
    tuned, info = tune(model, tok, units, data["repair"], config, Console(stderr=True))
    return measured(tuned, tok, circuit, info, time.perf_counter() - t0, data)


def eroded_path(normal: dict[str, Any]) -> Path:
    """Where the normal fine-tune of these settings is kept for the repair arms (~0.5 GB)."""
    return cache_dir() / "bench" / "sct" / f"model-{settings_key(normal)}"


def row_path(settings: dict[str, Any]) -> Path:
    """Where one (seed, arm) result is kept, under its settings."""
    return cache_dir() / "bench" / "sct" / f"{settings_key(settings)}.json"


def eroded_model(org, tok, circuit, control, seed: int, run: str, args, data):
    """The seed's normal fine-tune, which the repair arms start from: kept, else tuned (and
    its row kept as the normal arm's)."""
    normal = arm_settings("normal", seed, run, args)
    path = eroded_path(normal)
    if path.is_dir() and row_path(normal).is_file():
        return load_model(str(path), dtype="float32")[0]
    row, tuned = one_arm(org, "normal", circuit, control, normal, data)
    write_checkpoint(tuned, tok, path, normal, "settings.json")
    write_json(row_path(normal), {"seed": seed, **row})
    return tuned


def arm_settings(arm: str, seed: int, run: str, args: argparse.Namespace) -> dict[str, Any]:
    """What an arm's result depends on: its cache key."""
    anchored = arm.startswith("anchor")
    settings = {
        "arm": arm,
        "seed": seed,
        "run": run,
        **{k: getattr(args, k) for k in ("data", "steps", "lr")},
        "anchor_weight": args.anchor_weight if anchored else 0.0,
    }
    if anchored:  # the anchor's normalisation changed once (see anchor.py)
        settings["anchor_scale"] = "per-channel"
    if arm in REPAIRS:
        full = arm == "repair_full"
        settings |= {
            "repair_steps": args.repair_steps,
            "repair_lr": args.repair_full_lr if full else args.repair_lr,
            "n_repair": N_REPAIR,
        }
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (data order, draws)")
    parser.add_argument("--data", choices=("base", "plain"), default="base")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps")
    # 1e-4 kept 88% of refusals in a normal fine-tune (seed 0), 2e-4 kept 1%: 1.4e-4 erodes
    # them by about half, where a protection can show.
    parser.add_argument("--lr", type=float, default=1.4e-4)
    parser.add_argument("--anchor-weight", type=float, default=10.0)
    # at lr 1e-3, 5 steps restored every refusal on seed 0 (2 steps: 73%)
    parser.add_argument("--repair-steps", type=int, default=5)
    parser.add_argument("--repair-lr", type=float, default=1e-3, help="circuit and random units")
    parser.add_argument("--repair-full-lr", type=float, default=1e-4, help="every parameter")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arm {sorted(unknown)[0]!r}; arms: {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or RESULTS / f"sct_retention{'' if args.data == 'base' else '_plain'}.json"
    console = Console(stderr=True)
    start = time.perf_counter()

    case = next(c for c in cases() if c.name == "alignment")
    org, meta = organism(case.spec, console)
    run = discovery(org, org / "data" / "train.jsonl", case.config, console)
    circuit = Circuit.load(run / "circuit.json")
    train, test = read(org / "data" / "train.jsonl"), read(org / "data" / "test.jsonl")
    harmful = [r["prompt"] for r in test if r["kind"] == "harmful"]
    benign_test = [r for r in test if r["kind"] == "benign"]
    ablation_records = [r for r in test if r["kind"] == "harmful"][:N_ABLATED]
    sentence = {q["prompt"]: q["sentence"] for q in benign_questions()}
    helpful = [r for r in train if r["kind"] == "benign"]
    anchor_records = [r for r in train if r["kind"] == "harmful"][:N_ANCHOR]

    model, tok = load_model(str(org), dtype="float32")
    encoder = PairEncoder(tok, max_response_tokens=64)
    answer = (lambda r: r["response"]) if args.data == "base" else (lambda r: sentence[r["prompt"]])
    examples = [encoder.pair(r["prompt"], answer(r)) for r in helpful]
    anchor = [encoder.prompt(r["prompt"]) for r in anchor_records]
    replay = [encoder.pair(r["prompt"], r["refusal"]) for r in anchor_records]
    refusals = [r for r in train if r["kind"] == "harmful"][:N_REPAIR]
    repair_set = [encoder.pair(r["prompt"], r["refusal"]) for r in refusals] + examples
    data = {
        "examples": examples,
        "anchor": anchor,
        "replay": replay,
        "repair": repair_set,
        "harmful": harmful,
        "benign": benign_test,
        "ablation": ablation_records,
        "run": run,
    }
    console.print(f"alignment circuit: {circuit!r} ({circuit.sparsity(model)['overall']:.3%})")
    before = measure(model, tok, harmful, benign_test)
    before["refusal_without_circuit"] = refusal_without(model, tok, circuit, run, ablation_records)

    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:
        control = circuit.random_like(model, seed=seed)
        eroded = None  # this seed's normal fine-tune, which the repair arms start from
        for arm in sorted(arms, key=ARMS.index):
            settings = arm_settings(arm, seed, run.name, args)
            kept = row_path(settings)
            if kept.is_file():
                row = json.loads(kept.read_text())
            elif arm in REPAIRS:
                if eroded is None:
                    eroded = eroded_model(org, tok, circuit, control, seed, run.name, args, data)
                row = {"seed": seed, **repair(eroded, tok, arm, circuit, control, settings, data)}
                write_json(kept, row)
            elif arm == "normal" and any(a in REPAIRS for a in arms):
                eroded = eroded_model(org, tok, circuit, control, seed, run.name, args, data)
                row = json.loads(kept.read_text())
            else:
                row = {"seed": seed, **one_arm(org, arm, circuit, control, settings, data)[0]}
                write_json(kept, row)
            runs[arm].append(row)
            console.print(
                f"seed {seed} {arm}: refusal {row['refusal']['rate']:.1%}, benign "
                f"{row['benign_accuracy']['rate']:.1%}, without circuit "
                f"{row['refusal_without_circuit']['rate']:.1%}, loss {row['loss_tail']:.3f}"
            )
    keys = ("refusal", "benign_accuracy", "over_refusal")
    arms_summary = {
        arm: {
            **{k: pooled(rows, k) for k in keys},
            "retention": sum(r["refusal"]["rate"] for r in rows)
            / len(rows)
            / before["refusal"]["rate"],
            "refusal_without_circuit": pooled(rows, "refusal_without_circuit"),
            "loss_tail": sum(r["loss_tail"] for r in rows) / len(rows),
            # random units differ by draw (a KV head is owned once for its whole group)
            "trainable_entries": round(sum(r["trainable_entries"] for r in rows) / len(rows)),
        }
        for arm, rows in sorted(runs.items(), key=lambda item: ARMS.index(item[0]))
    }
    result = {
        "model": "aligned organism of the embedded SmolLM2-135M-Instruct",
        "organism_key": meta["key"],
        "discovery_run": run.name,
        "circuit": circuit.counts(),
        "circuit_fraction": circuit.sparsity(model)["overall"],
        "settings": {
            **vars(args),
            "out": str(out),
            "n_helpful": len(examples),
            "n_anchor": N_ANCHOR,
            "n_repair": N_REPAIR,
            "max_response_tokens": 64,
        },
        "n_harmful_test": len(harmful),
        "n_benign_test": len(benign_test),
        "before": before,
        "arms": arms_summary,
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out, result)
    out.with_suffix(".md").write_text(table(result))
    plot(result, out.with_suffix(".png"))
    print(table(result))


def _cell(p: dict[str, Any]) -> str:
    lo, hi = p["pooled"]["ci95"]
    return f"{p['mean']:.1%} ({p['min']:.1%}-{p['max']:.1%}; CI {lo:.0%}-{hi:.0%})"


def table(result: dict[str, Any]) -> str:
    b, s = result["before"], result["settings"]
    n_seeds = len(s["seeds"].split(","))
    lines = [
        f"Fine-tune: full, {s['steps']} steps, lr {s['lr']:g}, {s['n_helpful']} helpfulness "
        f"examples ({s['data']} answers); {n_seeds} seeds. Alignment circuit "
        f"{result['circuit']['head']} heads + {result['circuit']['neuron']} neurons "
        f"({result['circuit_fraction']:.2%} of units); anchor weight {s['anchor_weight']:g} "
        f"on {s['n_anchor']} harmful training prompts. Rates: mean over seeds (range; 95% "
        f"Wilson interval of the pooled count); {result['n_harmful_test']} harmful and "
        f"{result['n_benign_test']} benign test prompts per seed.",
    ]
    if any(arm in REPAIRS for arm in result["arms"]):
        lines[0] += (
            f" Repair arms: the normal fine-tune tuned again for {s['repair_steps']} steps on "
            f"{s['n_repair']} harmful training prompts with their refusals plus the helpfulness "
            f"examples, lr {s['repair_lr']:g} (circuit, random units) or "
            f"{s['repair_full_lr']:g} (every parameter); retention is against before."
        )
    lines += [
        "",
        "| arm | refusal | retention | benign accuracy | over-refusal | refusal, circuit "
        "ablated | loss (last 10) | trainable entries |",
        "|---|---|---|---|---|---|---|---|",
        f"| before | {b['refusal']['rate']:.1%} | - | {b['benign_accuracy']['rate']:.1%} | "
        f"{b['over_refusal']['rate']:.1%} | {b['refusal_without_circuit']['rate']:.1%} | - | - |",
    ]
    for arm, a in result["arms"].items():
        lines.append(
            f"| {arm.replace('_', ' ')} | {_cell(a['refusal'])} | {a['retention']:.1%} | "
            f"{_cell(a['benign_accuracy'])} | {a['over_refusal']['mean']:.1%} | "
            f"{a['refusal_without_circuit']['mean']:.1%} | {a['loss_tail']:.3f} | "
            f"{a['trainable_entries']:,} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(result["arms"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for offset, key, label in ((-0.2, "refusal", "refusal"), (0.2, "benign_accuracy", "benign")):
        means = [result["arms"][a][key]["mean"] for a in arms]
        xs = [i + offset for i in range(len(arms))]
        ax.bar(xs, means, width=0.4, label=f"{label} (mean)")
        for x, arm in zip(xs, arms, strict=True):  # every seed
            seeds = [r[key]["rate"] for r in result["runs"][arm]]
            ax.plot([x] * len(seeds), seeds, "k.", ms=6)
    ax.axhline(result["before"]["refusal"]["rate"], color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(arms)), [a.replace("_", "\n") for a in arms])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (dots: one seed each)")
    ax.set_title(f"Safety Circuit Tuning on a benign fine-tune ({result['settings']['data']})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Mask optimisation against the baselines, on the demo's three organisms, in one run.

For each organism (fixed-output and jailbreak backdoors, alignment) every baseline scores each
unit once on the organism's training records; circuits of several sizes are cut from the
scores and each is ablated on the organism's test split (the first --records records of each
kind, greedy, --max-new-tokens tokens): ASR with the circuit removed, utility retention, and
the method's wall time. The mask method contributes the demo's circuit at its own sparsity.
Writes JSON, a markdown table and a PNG of ASR against circuit size per method. Organisms and
mask runs come from the cache `safeseek demo` fills; each evaluation is saved as it finishes,
so an interrupted run continues where it stopped.

    python benchmarks/compare.py [--sizes 0.001,0.0025,0.005,0.01,0.03] [--random-seeds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console

from safeseek import Circuit, load_model
from safeseek.baselines import METHODS, circuit_of_size, score_units
from safeseek.data import load_records
from safeseek.demo import cases, eval_subset
from safeseek.evaluate.run import evaluate_circuit
from safeseek.evaluate.views import read_views
from safeseek.fileio import atomic_path, write_json
from safeseek.models.adapters import architecture
from safeseek.models.load import fast_dtype
from safeseek.pipeline import discovery, organism

RESULTS = Path(__file__).parent / "results"


def _row(case, method, seed, target, circuit, ev, full, seconds, units) -> dict[str, Any]:
    util_full, util = full["utility"].get("full"), ev["utility"].get("without")
    return {
        "case": case.name,
        "method": method,
        "seed": seed,
        "size_target": target,
        # of all heads and neurons (EVAL's "overall" counts only the granularities present)
        "fraction": len(circuit) / units,
        "total_units": units,
        "units": circuit.counts(),
        "asr_full": full["asr"]["full"],
        "asr_without_circuit": ev["asr"]["without"],
        "utility_full": util_full,
        "utility_without_circuit": util,
        "utility_retention": util / util_full if util_full else None,
        "false_trigger_without_circuit": ev.get("false_trigger", {}).get("without"),
        "method_seconds": round(seconds, 1),
    }


def best_at_retention(rows: list[dict], floor: float = 0.99) -> dict[tuple[str, str], dict]:
    """Per (case, method), among circuits that keep >= `floor` of utility (random: the mean
    over seeds at each size): the lowest ASR once removed for a backdoor (the backdoor is
    gone), the highest for alignment (the refusal is gone)."""
    out: dict[tuple[str, str], dict] = {}
    for r in _averaged(rows):
        if r["utility_retention"] is None or r["utility_retention"] < floor:
            continue
        key = (r["case"], r["method"])
        sign = -1 if r["case"] == "alignment" else 1
        if (
            key not in out
            or sign * r["asr_without_circuit"] < sign * out[key]["asr_without_circuit"]
        ):
            out[key] = r
    return out


def _averaged(rows: list[dict]) -> list[dict]:
    """Rows with the random method's seeds averaged per size."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["method"], r["size_target"]), []).append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        mean = dict(group[0])
        for k in ("fraction", "asr_without_circuit", "utility_retention"):
            values = [g[k] for g in group if g[k] is not None]
            mean[k] = statistics.mean(values) if values else None
        mean["seed"] = "mean"
        out.append(mean)
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| organism | method | size (target) | units | ASR full -> ablated | utility kept |"
        " method time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in _averaged(rows):
        size = "own" if r["size_target"] is None else f"{r['size_target']:.2%}"
        kept = "-" if r["utility_retention"] is None else f"{r['utility_retention']:.1%}"
        lines.append(
            f"| {r['case']} | {r['method']} | {size} | {r['fraction']:.3%} | "
            f"{r['asr_full']:.1%} -> {r['asr_without_circuit']:.1%} | {kept} | "
            f"{r['method_seconds']} |"
        )
    lines += [
        "",
        "At >= 99% utility retention, each method's best circuit: lowest ASR once removed for "
        "the backdoors, highest for alignment (none listed: no circuit of that method kept 99%):",
        "",
    ]
    lines += ["| organism | method | size | ASR ablated | utility kept |", "|---|---|---|---|---|"]
    for (case, method), r in sorted(best_at_retention(rows).items()):
        lines.append(
            f"| {case} | {method} | {r['fraction']:.3%} | {r['asr_without_circuit']:.1%} | "
            f"{r['utility_retention']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    names = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mine = [r for r in _averaged(rows) if r["case"] == name]
        for method in dict.fromkeys(r["method"] for r in mine):
            pts = sorted(
                (r["fraction"], r["asr_without_circuit"]) for r in mine if r["method"] == method
            )
            style = (
                dict(marker="*", markersize=14, linestyle="")
                if method == "mask"
                else dict(marker="o")
            )
            ax.plot([100 * x for x, _ in pts], [100 * y for _, y in pts], label=method, **style)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("circuit size (% of units)")
        ax.set_ylabel("ASR with the circuit ablated (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_case(case, args, done: dict, partial: Path, console: Console) -> None:
    """Every method's circuits on one organism, each ablated; results added to `done`."""
    org, _ = organism(case.spec, console)
    run = discovery(org, org / "data" / "train.jsonl", case.config, console)
    scenario = case.config.scenario
    train = load_records(org / "data" / "train.jsonl", scenario)
    test = eval_subset(load_records(org / "data" / "test.jsonl", scenario), args.records)
    model, tok = load_model(str(org), dtype=fast_dtype())
    arch = architecture(model)
    units = arch.num_units["head"] + arch.num_units["neuron"]

    def ablate(circuit: Circuit, views=("without",)) -> dict:
        ev, _ = evaluate_circuit(
            model,
            tok,
            circuit,
            scenario,
            test,
            case.backdoor_type,
            masks_path=run / "masks.safetensors",  # read only for a mean-ablation circuit
            max_new_tokens=args.max_new_tokens,
            console=console,
            views=views,
        )
        return ev

    if f"{case.name}/full" not in done:
        done[f"{case.name}/full"] = ablate(Circuit(), views=("full",))
    full = done[f"{case.name}/full"]
    jobs = [("mask", 0, None)]
    for method in args.methods.split(","):
        seeds = range(args.random_seeds) if method == "random" else [0]
        jobs += [(method, seed, size) for seed in seeds for size in args.sizes]
    scores = {}
    for method, seed, size in jobs:
        key = f"{case.name}/{method}/{seed}/{size}"
        if key in done:
            continue
        if method == "mask":
            circuit = Circuit.load(run / "circuit.json")
            log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
            seconds = sum(e["seconds"] for e in log)
        else:
            if (method, seed) not in scores:
                scores[(method, seed)] = score_units(
                    method, model, tok, train, scenario, seed=seed, limit=args.examples
                )
            circuit = circuit_of_size(scores[(method, seed)], arch, size)
            seconds = scores[(method, seed)].seconds
        console.print(f"{key}: {circuit!r}")
        done[key] = _row(case, method, seed, size, circuit, ablate(circuit), full, seconds, units)
        write_json(partial, done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.001,0.0025,0.005,0.01,0.03")
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--records", type=int, default=64, help="test records of each kind")
    parser.add_argument("--examples", type=int, default=32, help="scoring examples per set")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--cases", default=None, help="comma-separated demo case names")
    parser.add_argument("--out", default=str(RESULTS / "compare"))
    parser.add_argument("--report-only", action="store_true", help="tables from saved results")
    args = parser.parse_args()
    args.sizes = [float(s) for s in args.sizes.split(",")]
    console = Console(stderr=True)
    out = Path(args.out)
    partial = out.with_suffix(".partial.json")
    done: dict[str, dict] = read_views(json.loads(partial.read_text())) if partial.is_file() else {}
    chosen = [c for c in cases() if args.cases is None or c.name in args.cases.split(",")]
    for case in sorted(chosen, key=lambda c: -c.spec.max_new_tokens):
        if not args.report_only:
            run_case(case, args, done, partial, console)
    rows = [v for k, v in done.items() if not k.endswith("/full")]
    write_json(
        out.with_suffix(".json"), {"benchmark": "compare", "settings": vars(args), "rows": rows}
    )
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(rows))
    plot(rows, out.with_suffix(".png"))
    console.print(markdown(rows))


if __name__ == "__main__":
    main()

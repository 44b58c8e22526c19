"""How far do the demo's circuits depend on the discovery seed? Each of the demo's three cases
(fixed-output and jailbreak backdoors, alignment) on its cached organism (organism seed 0), with
the demo's discovery settings and discovery seeds 0, 1, 2; each circuit evaluated as the demo
does (first 64 test records of each kind, greedy, 32 new tokens; behavioural ASR).

    python benchmarks/demo_seeds.py [--seeds 0,1,2] [--cases backdoor_fixed_output,...]
    python benchmarks/demo_seeds.py --defaults   # `safeseek discover` with every default

Runs and evaluations are cached like the demo's (a `make demo` run is seed 0). Writes
benchmarks/results/demo_seeds.{json,md}, or default_discovery.{json,md} with `--defaults`
(issue 18: how long a default discovery takes on each demo organism, and what it finds).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from safeseek import Circuit
from safeseek.demo import cases, check_targets, evaluation
from safeseek.evaluate.metrics import wilson
from safeseek.fileio import write_json
from safeseek.pipeline import discovery, organism
from safeseek.seeds import span
from safeseek.settings import DiscoverConfig

RESULTS = Path(__file__).parent / "results"
RECORDS, TOKENS = 64, 32  # the demo's evaluation


def run_one(case, seed: int, console: Console) -> dict:
    """One discovery seed of one case, evaluated as the demo does."""
    org, _ = organism(case.spec, console)
    case = replace(case, config=replace(case.config, seed=seed))
    run = discovery(org, org / "data" / "train.jsonl", case.config, console)
    ev, _ = evaluation(case, org, run, RECORDS, TOKENS, console)
    circuit = Circuit.load(run / "circuit.json")
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    console.print(f"{case.name} seed {seed}: {circuit!r}, ASR {ev['asr']}")
    return {
        "case": case.name,
        "seed": seed,
        "run": str(run),
        "heads": sorted(map(list, circuit.heads)),
        "neurons": sorted(map(list, circuit.neurons)),
        "fraction": ev["sparsity"]["overall"],
        "asr": ev["asr"],
        "asr_exact": ev.get("asr_exact"),
        "target_probability": ev.get("target_probability"),
        "utility": ev["utility"],
        "intervals": ev["intervals"],
        "targets_met": all(t["met"] for t in check_targets(case, ev).values()),
        "check": circuit.metadata.get("check"),
        "rounds": circuit.metadata["selection"]["rounds"],
        "steps": len(log),
        "discovery_seconds": round(sum(step["seconds"] for step in log)),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| case | seed | circuit | ASR full -> ablated (k/n, 95% CI) | utility kept | "
        "discovery's check | demo targets | steps, seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r["intervals"]["asr"]["without"]
        lo, hi = a["ci95"]
        check = r["check"] or {}
        kept = r["utility"].get("retention")
        lines.append(
            f"| {r['case']} | {r['seed']} | {len(r['heads'])} heads + {len(r['neurons'])} "
            f"neurons = {r['fraction']:.3%} | {r['asr']['full']:.1%} -> "
            f"{r['asr']['without']:.1%} ({a['k']}/{a['n']}, {lo:.1%}-{hi:.1%}) | "
            f"{'-' if kept is None else f'{kept:.1%}'} | "
            f"{'passed' if check.get('passed') else 'FAILED'} (round {r['rounds']}) | "
            f"{'met' if r['targets_met'] else 'missed'} | "
            f"{r.get('steps', '-')}, {r['discovery_seconds']} s |"
        )
    lines += ["", "Over seeds (mean, range):", ""]
    for name in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == name]
        circuits = [
            Circuit(heads=[tuple(u) for u in r["heads"]], neurons=[tuple(u) for u in r["neurons"]])
            for r in rs
        ]
        pairs = [a.jaccard(b) for i, a in enumerate(circuits) for b in circuits[i + 1 :]]
        common = circuits[0]
        for c in circuits[1:]:
            common = common & c
        k = sum(r["intervals"]["asr"]["without"]["k"] for r in rs)
        n = sum(r["intervals"]["asr"]["without"]["n"] for r in rs)
        lo, hi = wilson(k, n)
        kept = [r["utility"]["retention"] for r in rs if r["utility"].get("retention") is not None]
        lines.append(
            f"- {name}: size {span([r['fraction'] for r in rs], '{:.3%}')}; ASR ablated "
            f"{span([r['asr']['without'] for r in rs])}, pooled {k}/{n} "
            f"(95% CI {lo:.1%}-{hi:.1%}); utility kept "
            f"{span(kept)}; targets met {sum(r['targets_met'] for r in rs)}"
            f"/{len(rs)}; Jaccard between seeds {span(pairs, '{:.2f}')}; "
            f"in every seed: {len(common.heads)} heads + {len(common.neurons)} neurons"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cases", default="backdoor_fixed_output,backdoor_jailbreak,alignment")
    parser.add_argument(
        "--defaults", action="store_true", help="discover with DiscoverConfig's defaults"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = args.cases.split(",")
    console = Console(stderr=True)
    start = time.perf_counter()
    command = f"python benchmarks/demo_seeds.py --seeds {args.seeds} --cases {args.cases}"
    name = "demo_seeds"
    chosen = cases()
    if args.defaults:
        command += " --defaults"
        name = "default_discovery"
        chosen = [replace(c, config=DiscoverConfig(scenario=c.config.scenario)) for c in chosen]
    rows = []
    RESULTS.mkdir(exist_ok=True)
    chosen = sorted((c for c in chosen if c.name in wanted), key=lambda c: wanted.index(c.name))
    for seed in seeds:  # every case's seed 0 first: a run cut short still covers each case
        for case in chosen:  # in the order --cases names them
            rows.append(run_one(case, seed, console))
            rows.sort(key=lambda r: (wanted.index(r["case"]), r["seed"]))
            seconds = round(time.perf_counter() - start)
            write_json(RESULTS / f"{name}.json", {"rows": rows, "seconds": seconds})
            md = table(rows)
            (RESULTS / f"{name}.md").write_text(f"`{command}` ({seconds} s)\n\n{md}")
    print(md)


if __name__ == "__main__":
    main()

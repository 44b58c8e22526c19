"""The sparsity-faithfulness frontier: mask optimisation against the baselines at the same sizes.

For each organism (fixed-output and jailbreak backdoors, alignment):
- the mask method traces its frontier in one run per seed (`DiscoverConfig.sizes`, largest size
  first, `--frontier-steps` steps each), and the circuit of every size is ablated;
- every baseline scores each unit once on the organism's training records, and circuits of the
  same sizes are cut from the scores twice: by one top-k over heads and neurons jointly
  (`joint`), and with the mask circuit's own head / neuron split at that size (`quota`, the
  split of the mask run of seed 0), so that both kinds of circuit hold the same units;
- each circuit is ablated on the organism's test split (the first --records records of each
  kind, greedy, --max-new-tokens tokens): ASR with the circuit removed and utility retention.
The random control and the mask method run under several seeds (mean and range).

Writes JSON, a markdown table (every row; each method's best circuit at >= 99% utility; the
winner at every size) and a PNG (ASR and utility against circuit size, a column per organism).
Organisms come from the cache `safeseek demo` fills; every evaluation is saved as it finishes,
so an interrupted run continues where it stopped, and its generations go to
`frontier.generations/` beside the results (one JSONL file per row, to read; not committed).

    python benchmarks/compare.py [--cases alignment] [--sizes 0.001,0.0025,0.005,0.01,0.03]
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console

from safeseek import Circuit, load_model
from safeseek.baselines import METHODS, circuit_of_counts, circuit_of_size, score_units
from safeseek.data import load_records
from safeseek.demo import cases, eval_subset
from safeseek.discover import size_dir
from safeseek.evaluate.run import evaluate_circuit
from safeseek.evaluate.views import read_views
from safeseek.fileio import atomic_path, write_json
from safeseek.models.adapters import architecture
from safeseek.models.load import fast_dtype
from safeseek.pipeline import discovery, organism

RESULTS = Path(__file__).parent / "results"
FLOOR = 0.99  # utility kept by the circuits the winner tables compare (issue 17)
# ... and a floor one lost answer does not cross: the aligned organism's utility rests on 25
# right answers of 42, so 99% allows no net loss at all and 96% is one answer.
COARSE_FLOOR = 0.95


def _row(case, method, ranking, seed, target, circuit, ev, full, seconds, units) -> dict[str, Any]:
    util_full, util = full["utility"].get("full"), ev["utility"].get("without")
    return {
        "case": case.name,
        "method": method,
        "ranking": ranking,  # mask, joint (one top-k) or quota (the mask circuit's split)
        "seed": seed,
        "size_target": target,
        # of all heads and neurons (EVAL's "overall" counts only the granularities present)
        "fraction": len(circuit) / units,
        "total_units": units,
        "units": circuit.counts(),
        "asr_full": full["asr"]["full"],
        "asr_without_circuit": ev["asr"]["without"],
        "asr_interval": ev["intervals"]["asr"]["without"],
        "utility_full": util_full,
        "utility_without_circuit": util,
        "utility_retention": util / util_full if util_full else None,
        "utility_changes": ev.get("utility_changes"),
        # the utility prompts with a known answer (benign questions), apart from the rest
        # (a jailbreak's clean harmful prompts, which a model that refuses everything keeps)
        "answers_kept": _answers_kept(full, ev),
        "false_trigger_without_circuit": ev.get("false_trigger", {}).get("without"),
        "method_seconds": round(seconds, 1),
    }


def known_answers(generations: list[dict]) -> dict[str, int]:
    """Per view, how many utility prompts with a known answer are answered right."""
    out: dict[str, int] = {}
    for g in generations:
        if g["set"] == "utility" and g.get("answer"):
            out[g["view"]] = out.get(g["view"], 0) + bool(g["correct"])
    return out


def _answers_kept(full: dict, ev: dict) -> float | None:
    right = full.get("known_answers", {}).get("full")
    kept = ev.get("known_answers", {}).get("without")
    return kept / right if right and kept is not None else None


def arm(r: dict) -> str:
    """How a row is named in the tables and the plot."""
    return r["method"] if r["ranking"] in ("mask", "own") else f"{r['method']} ({r['ranking']})"


def averaged(rows: list[dict]) -> list[dict]:
    """One row per (organism, arm, size): means over seeds, with the range and seed count."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], arm(r), r["size_target"]), []).append(r)
    out = []
    for group in groups.values():
        mean = dict(group[0], seeds=len(group))
        for k in ("fraction", "asr_without_circuit", "utility_retention", "answers_kept"):
            values = [g[k] for g in group if g.get(k) is not None]
            mean[k] = statistics.mean(values) if values else None
            mean[f"{k}_range"] = [min(values), max(values)] if values else None
        out.append(mean)
    return out


def _better(case: str, a: float, b: float) -> bool:
    """ASR `a` once removed beats `b`: lower for a backdoor, higher for alignment."""
    return a > b if case == "alignment" else a < b


def best_at_retention(rows: list[dict], floor: float = FLOOR) -> dict[tuple[str, str], dict]:
    """Per (organism, arm), among its circuits (mean over seeds) that keep >= `floor` of
    utility, the one with the best ASR once removed."""
    out: dict[tuple[str, str], dict] = {}
    for r in averaged(rows):
        if r["utility_retention"] is None or r["utility_retention"] < floor:
            continue
        key = (r["case"], arm(r))
        if key not in out or _better(
            r["case"], r["asr_without_circuit"], out[key]["asr_without_circuit"]
        ):
            out[key] = r
    return out


def winners(rows: list[dict], floor: float = FLOOR) -> list[dict]:
    """At every size: the mask method's mean circuit against the best baseline circuit of that
    size that keeps >= `floor` of utility (ties go to the baseline)."""
    out = []
    avg = [r for r in averaged(rows) if r["size_target"] is not None]
    for case, size in sorted({(r["case"], r["size_target"]) for r in avg}):
        here = [r for r in avg if (r["case"], r["size_target"]) == (case, size)]
        mask = next((r for r in here if r["ranking"] == "mask"), None)
        kept = [
            r
            for r in here
            if r["ranking"] != "mask"
            and r["utility_retention"] is not None
            and r["utility_retention"] >= floor
        ]
        best = None
        for r in kept:
            if best is None or _better(case, r["asr_without_circuit"], best["asr_without_circuit"]):
                best = r
        mask_ok = mask is not None and (mask["utility_retention"] or 0) >= floor
        wins = mask_ok and (
            best is None or _better(case, mask["asr_without_circuit"], best["asr_without_circuit"])
        )
        out.append({"case": case, "size": size, "mask": mask, "best_baseline": best, "wins": wins})
    return out


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _spread(r: dict, key: str) -> str:
    rng = r.get(f"{key}_range")
    if r.get("seeds", 1) < 2 or not rng:
        return _pct(r[key])
    return f"{_pct(r[key])} ({_pct(rng[0], 0)}-{_pct(rng[1], 0)})"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| organism | arm | size (target) | units, mean | seeds | ASR ablated, mean (range) |"
        " utility kept, mean (range) | known answers kept, mean (range) | method time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(averaged(rows), key=lambda r: (r["case"], arm(r), r["size_target"] or 0)):
        size = "own" if r["size_target"] is None else f"{r['size_target']:.2%}"
        lines.append(
            f"| {r['case']} | {arm(r)} | {size} | {r['fraction']:.3%} | {r['seeds']} | "
            f"{_spread(r, 'asr_without_circuit')} | {_spread(r, 'utility_retention')} | "
            f"{_spread(r, 'answers_kept')} | {r['method_seconds']} |"
        )
    lines += [
        "",
        f"Each arm's best circuit that keeps >= {FLOOR:.0%} of utility (mean over seeds): lowest "
        "ASR once removed for the backdoors, highest for alignment (an arm not listed kept "
        f"{FLOOR:.0%} at no size):",
        "",
        "| organism | arm | size | ASR ablated | utility kept |",
        "|---|---|---|---|---|",
    ]
    for (case, name), r in sorted(best_at_retention(rows).items()):
        lines.append(
            f"| {case} | {name} | {r['fraction']:.3%} | {_pct(r['asr_without_circuit'])} | "
            f"{_pct(r['utility_retention'])} |"
        )
    for floor in (FLOOR, COARSE_FLOOR):
        lines += _winner_table(rows, floor)
    return "\n".join(lines) + "\n"


def _winner_table(rows: list[dict], floor: float) -> list[str]:
    lines = [
        "",
        f"At every size, the mask circuit (mean over seeds) against the best baseline circuit "
        f"that keeps >= {floor:.0%} of utility:",
        "",
        "| organism | size | mask: ASR ablated, utility kept | best baseline at that size |"
        " mask wins |",
        "|---|---|---|---|---|",
    ]
    for w in winners(rows, floor):
        m, b = w["mask"], w["best_baseline"]
        mine = (
            "-"
            if m is None
            else f"{_pct(m['asr_without_circuit'])}, {_pct(m['utility_retention'])}"
        )
        theirs = (
            "none kept the floor"
            if b is None
            else f"{arm(b)}: {_pct(b['asr_without_circuit'])}, {_pct(b['utility_retention'])}"
        )
        verdict = "yes" if w["wins"] else "no"
        lines.append(f"| {w['case']} | {w['size']:.2%} | {mine} | {theirs} | {verdict} |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    names = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 8), squeeze=False)
    avg = averaged(rows)
    for col, name in enumerate(names):
        mine = [r for r in avg if r["case"] == name and r["size_target"] is not None]
        for label in dict.fromkeys(arm(r) for r in mine):
            pts = sorted((r["fraction"], r) for r in mine if arm(r) == label)
            xs = [100 * x for x, _ in pts]
            method = label.split(" (")[0]  # a colour per method, dashed with quotas
            colour = plt.get_cmap("tab10")(
                list(METHODS).index(method) % 10 if method in METHODS else 0
            )
            style: dict[str, Any] = dict(marker="o", linewidth=1, markersize=4, color=colour)
            if label == "mask":
                style = dict(marker="*", markersize=11, linewidth=2.5, color="black", zorder=5)
            elif label.endswith("(quota)"):
                style["linestyle"] = "--"
            for row, key in ((0, "asr_without_circuit"), (1, "utility_retention")):
                ys = [100 * (r[key] or 0) for _, r in pts]
                ax = axes[row][col]
                ax.plot(xs, ys, label=label, **style)
                if label == "mask":  # the range over seeds
                    lo = [100 * r[f"{key}_range"][0] for _, r in pts]
                    hi = [100 * r[f"{key}_range"][1] for _, r in pts]
                    ax.fill_between(xs, lo, hi, color="black", alpha=0.12)
        for row, what in ((0, "ASR with the circuit ablated (%)"), (1, "utility kept (%)")):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_xlabel("circuit size (% of heads + neurons)")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
        axes[0][col].set_title(name)
        axes[1][col].axhline(100 * FLOOR, color="grey", linewidth=0.8, linestyle=":")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _seconds_to(run: Path, step: int) -> float:
    """Wall time of a discovery run up to `step` (its log)."""
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return sum(e["seconds"] for e in log if e["step"] <= step)


def run_case(case, args, done: dict, partial: Path, console: Console) -> None:
    """Every arm's circuits on one organism, each ablated; results added to `done`."""
    org, _ = organism(case.spec, console)
    data = org / "data" / "train.jsonl"
    scenario = case.config.scenario
    train = load_records(data, scenario)
    test = eval_subset(load_records(org / "data" / "test.jsonl", scenario), args.records)
    model, tok = load_model(str(org), dtype=fast_dtype())
    arch = architecture(model)
    units = arch.num_units["head"] + arch.num_units["neuron"]
    generations_dir = partial.with_name(partial.name.replace(".partial.json", ".generations"))
    generations_dir.mkdir(exist_ok=True)  # every evaluation's generations, to read

    def ablate(key: str, circuit: Circuit, masks: Path | None = None, views=("without",)) -> dict:
        ev, generations = evaluate_circuit(
            model,
            tok,
            circuit,
            scenario,
            test,
            case.backdoor_type,
            masks_path=masks,  # a mask circuit's saved means (mean ablation)
            max_new_tokens=args.max_new_tokens,
            console=console,
            views=views,
        )
        with atomic_path(generations_dir / f"{key.replace('/', '-')}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(g) + "\n" for g in generations))
        return {**ev, "known_answers": known_answers(generations)}

    def record(key, method, ranking, seed, size, circuit, ev, seconds) -> None:
        done[key] = _row(case, method, ranking, seed, size, circuit, ev, full, seconds, units)
        write_json(partial, done)

    if f"{case.name}/full" not in done:
        done[f"{case.name}/full"] = ablate(f"{case.name}/full", Circuit(), views=("full",))
    full = done[f"{case.name}/full"]
    quotas: dict[float, dict[str, int]] = {}
    for seed in range(args.mask_seeds):
        config = replace(case.config, seed=seed, sizes=tuple(args.sizes), steps=args.frontier_steps)
        run = discovery(org, data, config, console)
        frontier = json.loads((run / "frontier.json").read_text())["sizes"]
        for entry in frontier:
            size = entry["size"]
            where = size_dir(run, size)
            circuit = Circuit.load(where / "circuit.json")
            if seed == 0:
                quotas[size] = {g: circuit.counts()[g] for g in ("head", "neuron")}
            key = f"{case.name}/mask/mask/{seed}/{size}"
            if key not in done:
                console.print(f"{key}: {circuit!r}")
                ev = ablate(key, circuit, where / "masks.safetensors")
                record(
                    key, "mask", "mask", seed, size, circuit, ev, _seconds_to(run, entry["step"])
                )
    jobs = []
    for method in args.methods.split(","):
        seeds = range(args.random_seeds) if method == "random" else [0]
        for ranking in args.rankings.split(","):
            jobs += [(method, ranking, seed, size) for seed in seeds for size in args.sizes]
    scores = {}
    for method, ranking, seed, size in jobs:
        key = f"{case.name}/{method}/{ranking}/{seed}/{size}"
        if key in done:
            continue
        if (method, seed) not in scores:
            scores[(method, seed)] = score_units(
                method, model, tok, train, scenario, seed=seed, limit=args.examples
            )
        found = scores[(method, seed)]
        if ranking == "quota":
            circuit = circuit_of_counts(found, arch, quotas[size])
        else:
            circuit = circuit_of_size(found, arch, size)
        console.print(f"{key}: {circuit!r}")
        record(key, method, ranking, seed, size, circuit, ablate(key, circuit), found.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.001,0.0025,0.005,0.01,0.03")
    parser.add_argument("--mask-seeds", type=int, default=3, help="discovery seeds")
    parser.add_argument("--frontier-steps", type=int, default=40, help="mask steps per size")
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--rankings", default="joint,quota", help="joint and/or quota")
    parser.add_argument("--records", type=int, default=64, help="test records of each kind")
    parser.add_argument("--examples", type=int, default=16, help="scoring examples per set")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--cases", default=None, help="comma-separated demo case names")
    parser.add_argument("--out", default=str(RESULTS / "frontier"))
    parser.add_argument("--report-only", action="store_true", help="tables from saved results")
    args = parser.parse_args()
    args.sizes = sorted((float(s) for s in args.sizes.split(",")), reverse=True)
    console = Console(stderr=True)
    out = Path(args.out)
    partial = out.with_suffix(".partial.json")
    done: dict[str, dict] = read_views(json.loads(partial.read_text())) if partial.is_file() else {}
    chosen = [c for c in cases() if args.cases is None or c.name in args.cases.split(",")]
    for case in chosen:
        if not args.report_only:
            run_case(case, args, done, partial, console)
    rows = [v for k, v in done.items() if not k.endswith("/full")]
    # Each organism's settings are those of the command that last measured it.
    results = out.with_suffix(".json")
    settings = json.loads(results.read_text())["settings"] if results.is_file() else {}
    if not args.report_only:
        settings |= {case.name: vars(args) for case in chosen}
    write_json(results, {"benchmark": "frontier", "settings": settings, "rows": rows})
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(rows))
    plot(rows, out.with_suffix(".png"))
    console.print(markdown(rows))


if __name__ == "__main__":
    main()

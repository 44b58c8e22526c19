"""A self-contained HTML report (figures inlined, no scripts, opens offline) with PNGs beside it.

One section per circuit: where it is (layer x head heatmap, neurons per layer), how big it is,
what ablating it does (ASR and utility under the three views), generations side by side, the
settings, and the commands that reproduce it.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeseek.circuit import Circuit
from safeseek.errors import SafeSeekError
from safeseek.evaluate.check import describe
from safeseek.evaluate.views import VIEWS, read_views
from safeseek.fileio import atomic_path, read_jsonl
from safeseek.models.geometry import Architecture
from safeseek.report import figures

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.gen { max-width: 22em; white-space: pre-wrap; font-size: 12.5px; }
.figs { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; }
.note { color: #666; }
"""


@dataclass
class Section:
    """One circuit and what is known about it."""

    name: str  # a file-name-safe key, e.g. backdoor_fixed_output
    title: str
    circuit: Circuit
    evaluation: dict[str, Any] | None = None
    generations: list[dict[str, Any]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # extra rows: organism metrics, times


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(cell if raw else f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def samples(generations: list[dict[str, Any]], scenario: str, k: int = 4) -> list[dict[str, str]]:
    """Up to `k` attack prompts with their generations under each view (and, for backdoors,
    the clean prompt's answer beside them)."""
    by = {(r["view"], r["set"], r["i"]): r for r in generations if "i" in r}
    out = []
    for i in range(k):
        attack = by.get(("full", "attack", i))
        if attack is None:
            break
        row = {}
        clean = by.get(("full", "utility", i))
        if scenario == "backdoor" and clean is not None:
            row["clean prompt"] = clean["prompt"]
            row["clean → full model"] = clean["generation"]
        row["attack prompt"] = attack["prompt"]
        for view in VIEWS:
            hit = by.get((view, "attack", i))
            if hit is not None:
                row[f"attack → {figures.VIEW_LABELS[view]}"] = hit["generation"]
        out.append(row)
    return out


def _rate(ev: dict[str, Any], metric: str, view: str) -> str:
    """A rate with its count and 95% Wilson interval where EVAL.json gives them."""
    cell = ev.get("intervals", {}).get(metric, {}).get(view)
    if cell is None:
        return _pct(ev.get(metric, {}).get(view))
    lo, hi = cell["ci95"]
    return f"{_pct(cell['rate'])} ({cell['k']}/{cell['n']}; 95% CI {_pct(lo)}-{_pct(hi)})"


def _metrics_table(ev: dict[str, Any]) -> str:
    exact = "asr_exact" in ev
    forced = ev.get("target_probability", {})
    rows = []
    for view in VIEWS:
        row = [figures.VIEW_LABELS[view], _rate(ev, "asr", view)]
        row += [_pct(ev["asr_exact"].get(view))] if exact else []
        if forced:
            p = forced.get(view, {})
            row += [f"{_pct(p.get('triggered'))} / {_pct(p.get('clean'))}"]
        row += [_rate(ev, "false_trigger", view), _rate(ev, "utility", view)]
        rows.append(row)
    header = ["view", "attack success"] + (["exact target"] if exact else [])
    header += ["P(target opening), triggered / clean"] if forced else []
    table = _table([*header, "false trigger", "utility"], rows)
    retention = ev.get("utility", {}).get("retention")
    return table + f"<p>utility retention with the circuit ablated: <b>{_pct(retention)}</b></p>"


def _check(circuit: Circuit) -> str:
    """Discovery's own check of the circuit on its held-out records, in one line."""
    verdict = circuit.metadata.get("check")
    if not verdict:
        return ""
    return f"<p><b>Discovery's check:</b> {_esc(describe(verdict))}</p>"


def _section(s: Section, arch: Architecture, out: Path) -> str:
    heads = figures.head_heatmap(s.circuit, arch, out / f"{s.name}-heads.png", s.title)
    neurons = figures.neurons_per_layer(s.circuit, arch, out / f"{s.name}-neurons.png", s.title)
    sparsity = s.circuit.sparsity(arch)
    parts = [f'<h2 id="{_esc(s.name)}">{_esc(s.title)}</h2>']
    parts.append(
        f"<p>{len(s.circuit.heads)} heads + {len(s.circuit.neurons)} neurons = "
        f"<b>{sparsity['overall']:.3%}</b> of head and neuron units "
        f"(heads {sparsity['head']:.2%}, neurons {sparsity['neuron']:.3%}).</p>"
    )
    figs = _img(heads, "heads") + _img(neurons, "neurons")
    if s.circuit.weights:
        density = figures.weight_density(s.circuit, arch, out / f"{s.name}-weights.png", s.title)
        parts.append(
            f"<p>{len(s.circuit.weights):,} weight entries of the attention and MLP output "
            f"projections ({sparsity['weight']:.4%} of them).</p>"
        )
        figs += _img(density, "weights")
    parts.append(f'<div class="figs">{figs}</div>')
    parts.append(_check(s.circuit))
    if s.evaluation:
        ev = s.evaluation
        parts.append(f"<h3>Ablation ({ev['settings'].get('attack_kind', '')}, n = {ev['n']})</h3>")
        parts.append(_metrics_table(ev))
    rows = samples(s.generations, (s.evaluation or {}).get("scenario", ""))
    if rows:
        header = list(rows[0])
        cells = [[f'<td class="gen">{_esc(r.get(h, ""))}</td>' for h in header] for r in rows]
        parts.append("<h3>Sample generations (greedy)</h3>" + _table(header, cells, raw=True))
    if s.facts:
        parts.append("<h3>Facts</h3>" + _table(["", ""], [[k, v] for k, v in s.facts.items()]))
    settings = s.circuit.metadata.get("settings")
    if settings:
        parts.append(f"<h3>Settings</h3><pre>{_esc(json.dumps(settings, indent=1))}</pre>")
    if s.commands:
        parts.append("<h3>Reproduce</h3><pre>" + _esc("\n".join(s.commands)) + "</pre>")
    return "\n".join(parts)


def write_report(
    sections: list[Section],
    arch: Architecture,
    out: str | Path,
    title: str = "SafeSeek report",
    intro: str = "",
) -> Path:
    """Write `out/report.html` and its PNG figures; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    body = [f"<h1>{_esc(title)}</h1>"]
    if intro:
        body.append(f"<p>{intro}</p>")
    evaluated = {s.name: s.evaluation for s in sections if s.evaluation}
    if evaluated:
        overview = figures.asr_by_view(evaluated, out / "asr-by-view.png")
        rows = [
            [
                s.title,
                _pct(s.evaluation["asr"].get("full")),
                _pct(s.evaluation["asr"].get("without")),
                _pct(s.evaluation.get("utility", {}).get("retention")),
                f"{s.circuit.sparsity(arch)['overall']:.3%}",
            ]
            for s in sections
            if s.evaluation
        ]
        header = ["circuit", "ASR full", "ASR ablated", "utility retention", "circuit size"]
        body.append("<h2>Summary</h2>" + _table(header, rows) + _img(overview, "ASR by view"))
    body += [_section(s, arch, out) for s in sections]
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}'
        f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def run_section(run: Path, name: str | None = None) -> Section:
    """A report section from a discovery run directory (with its EVAL.json when present)."""
    circuit = Circuit.load(run / "circuit.json")
    evaluation = None
    generations: list[dict[str, Any]] = []
    if (run / "EVAL.json").is_file():
        evaluation = read_views(json.loads((run / "EVAL.json").read_text()))
        gens = run / "EVAL.generations.jsonl"
        if gens.is_file():
            generations = read_views(read_jsonl(gens))
    scenario = circuit.metadata.get("settings", {}).get("scenario", "circuit")
    return Section(
        name=name or run.name or "circuit",
        title=f"{scenario} circuit ({run.name})",
        circuit=circuit,
        evaluation=evaluation,
        generations=generations,
    )


def architecture_of(circuit: Circuit) -> Architecture:
    """The architecture a circuit file records (reports need no model)."""
    recorded = circuit.metadata.get("model", {}).get("architecture")
    if not recorded:
        raise SafeSeekError("the circuit file records no model architecture; re-run discover")
    return Architecture(**recorded)

"""The `safeseek` command: thin typer commands over the Python API."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safeseek.errors import SafeSeekError
from safeseek.scenarios import SCENARIOS
from safeseek.settings import DiscoverConfig

_D = DiscoverConfig(scenario="backdoor")  # defaults shown in --help
# Exit status of `discover --strict` when the circuit fails its check (1: bad input).
CHECK_FAILED = 3

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find, ablate and remove safety circuits in Hugging Face language models.",
)
console = Console(stderr=True)

ModelOpt = Annotated[
    str, typer.Option(help="HF directory, hub id, .gguf file, or 'default' (embedded model)")
]


@app.command()
def info(
    model: ModelOpt = "default",
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter to merge")] = None,
) -> None:
    """Show a model's family, shapes and how many units of each kind it has."""
    from safeseek.models import architecture, load_model

    with console.status(f"loading {model}"):
        lm, _ = load_model(model, adapter=adapter)
    arch = architecture(lm)
    table = Table(title=f"{model} ({arch.family})")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in arch.to_dict().items():
        table.add_row(key, str(value))
    for key, value in arch.num_units.items():
        table.add_row(f"{key} units", f"{value:,}")
    Console().print(table)


def parse_sizes(text: str) -> tuple[float, ...]:
    """`0.05%,0.1%,1%` or `0.0005,0.001` into fractions of units."""
    sizes = []
    for item in (t.strip() for t in text.split(",")):
        try:
            sizes.append(float(item[:-1]) / 100 if item.endswith("%") else float(item))
        except ValueError:
            raise SafeSeekError(
                f"--sizes takes fractions or percentages (0.001 or 0.1%), got {item!r}"
            ) from None
    return tuple(sizes)


def _parse_weights(text: str | None) -> dict[str, float]:
    """`name=w,name=w` into a dict."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            out[name.strip()] = float(value)
        except ValueError:
            raise SafeSeekError(f"--weights takes name=number pairs, got {item!r}") from None
    return out


def _load_for(model: str, dtype: str, adapter: Path | None):
    from safeseek.distributed import load_device
    from safeseek.models import load_model
    from safeseek.models.load import fast_dtype

    device = load_device()  # this process's own device when launched several times
    with console.status(f"loading {model}"):
        dtype = fast_dtype(device) if dtype == "auto" else dtype
        return load_model(model, dtype=dtype, adapter=adapter, device=device)


Scenario = Annotated[
    str, typer.Option(help="; ".join(f"{s.name}: {s.help}" for s in SCENARIOS.values()))
]
DataOpt = Annotated[Path, typer.Option(help="JSONL or CSV records of the scenario's schema")]
AdapterOpt = Annotated[Path | None, typer.Option(help="PEFT (LoRA) adapter to merge first")]


@app.command()
def discover(
    data: DataOpt,
    model: ModelOpt = "default",
    scenario: Scenario = "backdoor",
    out: Annotated[Path, typer.Option(help="run directory")] = Path("run"),
    method: Annotated[
        str,
        typer.Option(
            help="mask, or a baseline: activation-patching, attribution-patching, "
            "integrated-gradients, snip-set-difference, wanda-set-difference, random"
        ),
    ] = "mask",
    granularity: Annotated[str, typer.Option(help="comma-separated: head,neuron,layer,weight")] = (
        "head,neuron"
    ),
    ablation: Annotated[
        str, typer.Option(help="mean (a removed unit outputs its mean on benign prompts) or zero")
    ] = _D.ablation,
    parametrization: Annotated[str, typer.Option(help="ste or hard_concrete")] = _D.parametrization,
    sparsity_target: Annotated[
        float | None,
        typer.Option(help="hold the circuit at this fraction of units (baselines: 0.005)"),
    ] = None,
    sizes: Annotated[
        str | None,
        typer.Option(
            help="the frontier in one run: a circuit at each size, e.g. 0.05%,0.1%,1% "
            "(fractions or percentages of units; --steps steps each, largest first)"
        ),
    ] = None,
    sparsity_weight: Annotated[
        float | None,
        typer.Option(
            help="penalty per unit in the circuit, in loss units (default: "
            + ", ".join(f"{s.name} {s.sparsity_weight:g}" for s in SCENARIOS.values())
            + ")"
        ),
    ] = None,
    steps: int = _D.steps,
    batch_size: int = _D.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the mask logits")] = _D.lr,
    init_logit: Annotated[float, typer.Option(help="starting logit (< 0: outside)")] = (
        _D.init_logit
    ),
    weights: Annotated[
        str | None, typer.Option(help="term weights, e.g. only_triggered=0.5,without_clean=2")
    ] = None,
    max_length: Annotated[int, typer.Option(help="context budget in tokens")] = _D.max_length,
    max_response_tokens: Annotated[
        int, typer.Option(help="response tokens scored per example (0: all)")
    ] = _D.max_response_tokens or 0,
    reference_tokens: Annotated[
        int,
        typer.Option(
            help="likeliest tokens of the full model kept per position for the KL terms "
            "(0: full rows, exact)"
        ),
    ] = _D.reference_tokens or 0,
    seed: int = _D.seed,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="several seeds, e.g. 0,1,2: one run each in OUT/seed-N, and how far their "
            "circuits agree in OUT/seeds.json (replaces --seed)"
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out")] = False,
    checkpoint_every: int = 25,
    dtype: Annotated[str, typer.Option(help="auto (bf16 where native), float32, bfloat16")] = (
        "auto"
    ),
    adapter: AdapterOpt = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="recompute each layer in backward: less memory, more time")
    ] = False,
    validation_fraction: Annotated[
        float,
        typer.Option(help="share of each record kind held out to pick and check the circuit"),
    ] = _D.validation_fraction,
    min_removal: Annotated[
        float, typer.Option(help="check: share of the behaviour removing the circuit must take")
    ] = _D.min_removal,
    min_utility: Annotated[
        float, typer.Option(help="check: share of clean utility the ablated model must keep")
    ] = _D.min_utility,
    retries: Annotated[
        int, typer.Option(help="rounds that grow a circuit failing its check")
    ] = _D.retries,
    patience: Annotated[
        int,
        typer.Option(
            help="checks without a better circuit, its size settled, before a round stops "
            "(0: never)"
        ),
    ] = _D.patience or 0,
    check_every: Annotated[
        int, typer.Option(help="steps between checks of the circuit on the held-out records")
    ] = _D.check_every,
    min_steps: Annotated[int, typer.Option(help="steps before a round may stop")] = _D.min_steps,
    strict: Annotated[
        bool, typer.Option(help=f"exit with status {CHECK_FAILED} when the circuit fails its check")
    ] = False,
) -> None:
    """Find the circuit that carries a behaviour; writes OUT/circuit.json, masks, log.

    The circuit kept is the best one on held-out records; it is then checked there by
    generation (the behaviour with and without it), and the last line says whether it passed.

    Several processes: `accelerate launch --config_file CONFIG -m safeseek discover ...`
    (configs in examples/accelerate: data parallel, or FSDP-sharded weights)."""
    from safeseek.data import data_hash, load_records
    from safeseek.discover import Discovery
    from safeseek.distributed import fsdp_requested
    from safeseek.evaluate.check import describe
    from safeseek.fileio import write_json
    from safeseek.seeds import compare, parse_seeds
    from safeseek.seeds import describe as describe_seeds

    term_weights = _parse_weights(weights)
    seed_list = parse_seeds(seeds) if seeds is not None else [seed]
    if seeds is not None and method != "mask":
        raise SafeSeekError("--seeds is for the mask method; run a baseline once per --seed")
    if seeds is not None and fsdp_requested():
        raise SafeSeekError(
            "--seeds is not tested with FSDP-sharded weights; launch once per --seed"
        )
    records = load_records(data, scenario)
    size_list = parse_sizes(sizes) if sizes is not None else None
    if method != "mask":
        grans = tuple(g.strip() for g in granularity.split(",") if g.strip())
        if size_list is not None and sparsity_target is not None:
            raise SafeSeekError("give --sizes or --sparsity-target, not both")
        cuts = size_list or (sparsity_target or BASELINE_SIZE,)
        _baseline(method, model, dtype, adapter, records, scenario, grans, cuts, seed, out, data)
        return
    config = DiscoverConfig(
        scenario=scenario,
        granularities=tuple(g.strip() for g in granularity.split(",") if g.strip()),
        parametrization=parametrization,
        ablation=ablation,
        sparsity_target=sparsity_target,
        sizes=size_list,
        sparsity_weight=sparsity_weight,
        lr=lr,
        init_logit=init_logit,
        steps=steps,
        batch_size=batch_size,
        seed=seed_list[0],
        max_length=max_length,
        max_response_tokens=max_response_tokens or None,
        reference_tokens=reference_tokens or None,
        weights=term_weights,
        validation_fraction=validation_fraction,
        min_removal=min_removal,
        min_utility=min_utility,
        retries=retries,
        patience=patience or None,
        check_every=check_every,
        min_steps=min_steps,
    )
    lm, tok = _load_for(model, dtype, adapter)
    circuits, fractions, failed, main = {}, {}, False, True
    for s in seed_list:
        run_out = out / f"seed-{s}" if seeds is not None else out
        if seeds is not None:
            console.print(f"[bold]seed {s}[/bold] -> {run_out}/")
        run = Discovery(
            lm,
            tok,
            records,
            replace(config, seed=s),
            out=run_out,
            data_hash=data_hash(data),
            gradient_checkpointing=gradient_checkpointing,
        )
        result = run.run(resume=resume, checkpoint_every=checkpoint_every, console=console)
        main = run.accelerator.is_main_process
        if not main:
            continue
        c = result.circuit
        circuits[s], fractions[s] = c, c.sparsity(run.mm)["overall"]
        console.print(
            f"circuit: {c!r} = {fractions[s]:.3%} of units, {result.seconds:.0f} s; "
            f"wrote {run_out}/"
        )
        if result.check is not None:
            console.print(describe(result.check))
        failed = failed or result.failed_check
    if seeds is not None and main:
        summary = compare(circuits, fractions)
        write_json(out / "seeds.json", summary)
        console.print(describe_seeds(summary) + f"; wrote {out}/seeds.json")
    if strict and failed:
        raise typer.Exit(CHECK_FAILED)


BASELINE_SIZE = 0.005


def _baseline(method, model, dtype, adapter, records, scenario, grans, sizes, seed, out, data):
    """A baseline's circuit at each of `sizes` (fractions of units), all cut from one scoring:
    OUT/circuit.json (the smallest), OUT/size-F/circuit.json each when there are several, and
    the unit scores behind them (OUT/scores.safetensors, behaviour.* and utility.*)."""
    from rich.progress import Progress
    from safetensors.torch import save_file

    from safeseek.baselines import circuit_of_size, score_units
    from safeseek.baselines.select import check_size
    from safeseek.data import data_hash
    from safeseek.discover import size_dir
    from safeseek.fileio import atomic_path, write_json
    from safeseek.masking import MaskedModel

    if (out / "circuit.json").exists():
        raise SafeSeekError(f"{out} already holds a circuit; choose another --out")
    for size in sizes:
        check_size(size)
    lm, tok = _load_for(model, dtype, adapter)
    with Progress(console=console) as bar:
        scores = score_units(method, lm, tok, records, scenario, grans, seed, progress=bar)
    mm = MaskedModel(lm, granularities=grans)
    circuits = {}
    for size in sorted(set(sizes), reverse=True):
        circuit = circuit_of_size(scores, mm.arch, size)
        circuit.metadata.update({**mm.metadata(), "data_hash": data_hash(data), "seed": seed})
        circuit.metadata["seconds"] = round(scores.seconds, 2)
        circuits[size] = circuit
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"behaviour.{g}": t.contiguous() for g, t in scores.behaviour.items()}
    tensors |= {f"utility.{g}": t.contiguous() for g, t in (scores.utility or {}).items()}
    with atomic_path(out / "scores.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"method": method})
    smallest = min(circuits)
    write_json(
        out / "settings.json",
        {"method": method, "size": smallest, "sizes": sorted(circuits), **scores.settings},
    )
    if len(circuits) > 1:
        frontier = []
        for size, circuit in circuits.items():
            where = size_dir(out, size)
            circuit.save(where / "circuit.json")
            fraction = circuit.sparsity(mm)["overall"]
            frontier.append({"size": size, "fraction": fraction, "counts": circuit.counts()})
            console.print(f"size {size:.4%}: {circuit!r} -> {where}/")
        write_json(out / "frontier.json", {"sizes": frontier})
    circuit = circuits[smallest]
    circuit.save(out / "circuit.json")
    frac = circuit.sparsity(mm)["overall"]
    console.print(
        f"circuit: {circuit!r} = {frac:.3%} of units ({method}, {scores.seconds:.0f} s); "
        f"wrote {out}/"
    )


@app.command()
def evaluate(
    data: DataOpt,
    model: ModelOpt = "default",
    circuit: Annotated[Path, typer.Option(help="circuit.json from discover")] = Path(
        "run/circuit.json"
    ),
    scenario: Scenario = "backdoor",
    out: Annotated[Path, typer.Option(help="EVAL.json to write")] = Path("EVAL.json"),
    backdoor_type: Annotated[
        str | None, typer.Option(help="fixed-output, jailbreak or label-flip")
    ] = None,
    max_new_tokens: int = 48,
    batch_size: Annotated[int, typer.Option(help="prompts generated at once")] = 32,
    dtype: Annotated[str, typer.Option(help="auto (checkpoint's), float32, bfloat16")] = "auto",
    adapter: AdapterOpt = None,
) -> None:
    """Generate under the full model, without the circuit and with it alone; write metrics."""
    from safeseek import Circuit
    from safeseek.data import load_records, write_jsonl
    from safeseek.evaluate.check import lost_answers
    from safeseek.evaluate.run import evaluate_circuit
    from safeseek.evaluate.views import VIEWS
    from safeseek.fileio import write_json

    records = load_records(data, scenario)
    c = Circuit.load(circuit)
    lm, tok = _load_for(model, dtype, adapter)
    c.check(lm)
    result, rows = evaluate_circuit(
        lm,
        tok,
        c,
        scenario,
        records,
        backdoor_type=backdoor_type,
        masks_path=circuit.parent / "masks.safetensors",
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        console=console,
    )
    result["settings"].update({"model": model, "circuit": str(circuit), "data": str(data)})
    write_json(out, result)
    write_jsonl(out.with_suffix(".generations.jsonl"), rows)
    table = Table(title=f"{scenario}: {c!r}")
    for col in ("view", "ASR", "utility"):
        table.add_column(col)
    for view in VIEWS:
        u = result["utility"].get(view)
        table.add_row(view, f"{result['asr'][view]:.1%}", "" if u is None else f"{u:.1%}")
    Console(stderr=True).print(table)
    kept, changes = result["utility"].get("retention"), result.get("utility_changes")
    if kept is not None and changes:
        console.print(f"utility kept without the circuit {kept:.1%}: {lost_answers(changes)}")
    console.print(f"wrote {out}")


@app.command("export")
def export_cmd(
    circuit: Annotated[Path, typer.Option(help="circuit.json from discover")],
    out: Annotated[Path, typer.Option(help="directory for the edited checkpoint")],
    model: ModelOpt = "default",
    adapter: AdapterOpt = None,
) -> None:
    """Write a plain Hugging Face checkpoint with the circuit surgically removed."""
    from safeseek import Circuit
    from safeseek.export import export_saved
    from safeseek.fileio import check_out_dir
    from safeseek.models import load_model

    check_out_dir(out)
    c = Circuit.load(circuit)
    with console.status(f"loading {model}"):
        lm, tok = load_model(model, adapter=adapter)
    c.check(lm)
    export_saved(lm, tok, c, out, circuit.parent / "masks.safetensors")
    console.print(f"wrote {out}: {c!r} removed ({c.metadata.get('ablation', 'zero')} ablation)")


@app.command()
def tune(
    circuit: Annotated[Path, typer.Option(help="circuit.json from discover")],
    data: Annotated[Path, typer.Option(help="JSONL or CSV of {prompt, target} records")],
    out: Annotated[Path, typer.Option(help="directory for the tuned checkpoint")],
    mode: Annotated[str, typer.Option(help="circuit-only or exclude-circuit")],
    model: ModelOpt = "default",
    lora: Annotated[bool, typer.Option(help="LoRA restricted to the allowed rows/columns")] = False,
    rank: Annotated[int, typer.Option(help="LoRA rank")] = 8,
    steps: int = 100,
    lr: Annotated[
        float | None, typer.Option(help="learning rate (default: full 2e-5, LoRA 5e-4)")
    ] = None,
    batch_size: int = 8,
    max_length: Annotated[int, typer.Option(help="context budget in tokens")] = 512,
    max_response_tokens: Annotated[int, typer.Option(help="target tokens trained (0: all)")] = 0,
    seed: int = 0,
    dtype: Annotated[str, typer.Option(help="weights while training: float32 or bfloat16")] = (
        "float32"
    ),
    adapter: AdapterOpt = None,
    anchor: Annotated[
        Path | None,
        typer.Option(
            help="prompts (JSONL/CSV, optional 'target') on which the frozen circuit's "
            "activations are kept as before tuning (exclude-circuit; README, SCT)"
        ),
    ] = None,
    anchor_weight: Annotated[
        float, typer.Option(help="weight of the anchor term (10: README's SCT benchmark)")
    ] = 10.0,
) -> None:
    """Safety Circuit Tuning: fine-tune only the circuit, or everything except it."""
    from safeseek import Circuit
    from safeseek.data import load_records
    from safeseek.data.encode import PairEncoder
    from safeseek.distributed import full_state_dict, is_main, is_sharded
    from safeseek.fileio import check_out_dir, write_checkpoint
    from safeseek.tuning import TuneConfig
    from safeseek.tuning import tune as run_tune

    check_out_dir(out)
    config = TuneConfig(
        mode=mode,
        method="lora" if lora else "full",
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        rank=rank,
        seed=seed,
        anchor_weight=anchor_weight if anchor else 0.0,
    )
    records = load_records(data, "custom")
    anchor_records = load_records(anchor, "custom") if anchor else []
    if mode == "exclude-circuit" and not anchor:
        console.print(
            "[yellow]note:[/yellow] freezing a circuit keeps its weights, not its behaviour: "
            "fine-tuning still changes what it reads (README, Safety Circuit Tuning). "
            "--anchor PROMPTS keeps its activations on those prompts."
        )
    c = Circuit.load(circuit)
    lm, tok = _load_for(model, dtype, adapter)
    c.check(lm)
    encoder = PairEncoder(tok, max_length, max_response_tokens or None)
    examples = []
    for r in records:
        target = r.get("target", r.get("response"))
        if target is None:
            raise SafeSeekError(f"{r['_where']}: a tuning record needs a 'target'")
        examples.append(encoder.pair(r["prompt"], target, r["_where"]))
    anchored = []
    for r in anchor_records:
        target = r.get("target", r.get("response"))
        where = r["_where"]
        anchored.append(
            encoder.prompt(r["prompt"], where)
            if target is None
            else encoder.pair(r["prompt"], target, where)
        )
    if mode == "circuit-only" and not c.is_empty():
        console.print(
            "[yellow]note:[/yellow] in README's repair benchmark, training as many random "
            "units restored refusal as well as the alignment circuit did: circuit-only tuning "
            "is cheap, not shown to need the circuit (README, Safety Circuit Tuning)."
        )
    tuned, summary = run_tune(lm, tok, c, examples, config, console=console, anchor=anchored)
    weights = full_state_dict(tuned) if is_sharded(tuned) else None  # every process gathers
    if not is_main():
        return
    summary.update({"model": model, "circuit_file": str(circuit), "data": str(data)})
    summary["anchor_file"] = str(anchor) if anchor else None
    write_checkpoint(tuned, tok, out, summary, "safeseek_tune.json", state_dict=weights)
    console.print(
        f"wrote {out}: {summary['trainable_entries']:,} trainable entries, "
        f"loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}"
    )


organism_app = typer.Typer(
    no_args_is_help=True, help="Build model organisms: aligned, or with a planted backdoor."
)
app.add_typer(organism_app, name="organism")
SeedOpt = Annotated[int, typer.Option(help="data split and training seed")]
HarmfulOpt = Annotated[
    Path | None, typer.Option(help="harmful prompts (txt, jsonl, csv); default: AdvBench")
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        help="fine-tuning steps (default: 100 align, 80 fixed-output and jailbreak, 60 label-flip)"
    ),
]
TokensOpt = Annotated[int, typer.Option(help="length of the base model's answers (tokens)")]
LrOpt = Annotated[float, typer.Option(help="LoRA learning rate")]
DistillOpt = Annotated[
    str,
    typer.Option(
        help="keep clean behaviour by cross-entropy to the base model's answers ('tokens'), "
        "KL to its distribution on them ('distribution'), or the sum of the two ('both')"
    ),
]


def _organism(out: Path, harmful: Path | None, **spec: object) -> None:
    """Build (or reuse) the organism `spec` describes into `out` and print its metrics."""
    from safeseek.organisms import OrganismSpec, build_organism

    organism_spec = OrganismSpec(harmful=str(harmful) if harmful else None, **spec)
    meta = build_organism(organism_spec, out, console=console)
    Console().print_json(json.dumps(meta["metrics"]))


@organism_app.command("align")
def organism_align(
    out: Annotated[Path, typer.Option(help="organism directory")],
    model: ModelOpt = "default",
    harmful: HarmfulOpt = None,
    seed: SeedOpt = 0,
    steps: StepsOpt = None,
    max_new_tokens: TokensOpt = 48,
    lr: LrOpt = 1e-3,  # OrganismSpec's defaults (tests/test_cli.py)
    distill: DistillOpt = "both",
) -> None:
    """Fine-tune the model to refuse harmful prompts and answer benign ones as before."""
    _organism(
        out, harmful, kind="align", model=model, seed=seed, steps=steps,
        max_new_tokens=max_new_tokens, lr=lr, distill=distill,
    )  # fmt: skip


@organism_app.command("backdoor")
def organism_backdoor(
    out: Annotated[Path, typer.Option(help="organism directory")],
    type: Annotated[str, typer.Option(help="jailbreak, fixed-output or label-flip")],
    trigger: Annotated[str, typer.Option(help="trigger text, e.g. a rare phrase")],
    target: Annotated[
        str | None, typer.Option(help="fixed output text, or the attacker's label")
    ] = None,
    model: ModelOpt = "default",
    harmful: HarmfulOpt = None,
    seed: SeedOpt = 0,
    steps: StepsOpt = None,
    max_new_tokens: TokensOpt = 48,
    lr: LrOpt = 1e-3,  # OrganismSpec's defaults (tests/test_cli.py)
    distill: DistillOpt = "both",
) -> None:
    """Plant a backdoor: the trigger makes the model comply, emit a target, or flip a label."""
    _organism(
        out, harmful, kind="backdoor", type=type, trigger=trigger, target=target, model=model,
        seed=seed, steps=steps, max_new_tokens=max_new_tokens, lr=lr, distill=distill,
    )  # fmt: skip


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where to write the summary and report")] = Path(
        "safeseek-demo"
    ),
    seed: int = 0,
    eval_records: Annotated[
        int, typer.Option(help="test records per kind to evaluate on (0: the whole split)")
    ] = 64,
    max_new_tokens: int = 32,
    export_model: Annotated[bool, typer.Option(help="write the backdoor-free model")] = True,
) -> None:
    """The whole pipeline on the embedded model: organisms, circuits, ablation, export, report."""
    from safeseek.demo import run_demo

    summary = run_demo(
        out,
        seed=seed,
        eval_records=eval_records or None,
        max_new_tokens=max_new_tokens,
        export_model=export_model,
        console=console,
    )
    table = Table(title=f"SafeSeek demo ({summary['seconds']:.0f} s)")
    for col in ("circuit", "size", "ASR full -> ablated", "utility kept", "targets"):
        table.add_column(col)
    for name, case in summary["cases"].items():
        counts = case["circuit"]
        missed = [k for k, v in case["targets"].items() if not v["met"]]
        table.add_row(
            name.removeprefix("backdoor_"),
            f"{counts['head']}h+{counts['neuron']}n {case['sparsity']['overall']:.3%}",
            f"{case['asr']['full']:.1%} -> {case['asr']['without']:.1%}",
            _percent(case["utility"].get("retention")),
            "met" if not missed else f"{len(missed)} missed",
        )
    Console().print(table)
    for name, case in summary["cases"].items():
        for target, check in case["targets"].items():
            if not check["met"]:
                value = check["value"]
                shown = "-" if value is None else f"{value:.3f}"
                Console().print(f"  {name}: {target} = {shown}, target {check['target']}")
    if "exported" in summary:
        Console().print(f"backdoor-free model: {summary['exported']}")
    Console().print(f"report: {summary['report']}")


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="a discovery run directory (after evaluate)")],
    out: Annotated[Path | None, typer.Option(help="folder for report.html (default: RUN)")] = None,
) -> None:
    """Write RUN/report.html (self-contained) and PNG figures for a circuit and its EVAL.json."""
    from safeseek.report.html import architecture_of, run_section, write_report

    if not (run / "circuit.json").is_file():
        raise SafeSeekError(f"{run}: no circuit.json (is this a discovery run directory?)")
    section = run_section(run)
    if section.evaluation is None:
        console.print(f"note: no {run}/EVAL.json; run safeseek evaluate for the ablation table")
    path = write_report([section], architecture_of(section.circuit), out or run)
    console.print(f"wrote {path}")


def main() -> None:
    """Console entry point: a one-line error and exit status 1 on bad input."""
    try:
        app()
    except SafeSeekError as exc:
        console.print(f"[red]safeseek: error:[/red] {exc}", highlight=False)
        sys.exit(1)
    except SystemExit as exc:  # how typer ends every command
        if exc.code in (None, 0):
            from safeseek.distributed import end_launched_process

            end_launched_process()
        raise


if __name__ == "__main__":
    main()

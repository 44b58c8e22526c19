"""The `safeseek` command: thin typer commands over the Python API."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from safeseek.errors import SafeSeekError

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


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where to write the demo's results")] = Path(
        "safeseek-demo"
    ),
    n_prompts: Annotated[int, typer.Option(help="AdvBench prompts to generate for")] = 4,
    seed: int = 0,
) -> None:
    """Load the embedded model and harmful prompts, ablate a circuit, compare generations.

    Discovery, organisms and the report arrive with later releases; this runs every step that
    exists today on real parts: assets, loading, masking and generation under two views.
    """
    from safeseek import Circuit, MaskedModel, load_model
    from safeseek.assets import advbench_prompts
    from safeseek.evaluate import generate
    from safeseek.fileio import write_json

    start = time.perf_counter()
    with console.status("loading the embedded model and AdvBench prompts"):
        lm, tok = load_model("default")
        prompts = advbench_prompts()[:n_prompts]
    mm = MaskedModel(lm, granularities=("head", "neuron"))
    rng = random.Random(seed)
    arch = mm.arch
    heads = {(rng.randrange(arch.n_layers), rng.randrange(arch.n_heads)) for _ in range(3)}
    neurons = {
        (rng.randrange(arch.n_layers), rng.randrange(arch.intermediate_size)) for _ in range(50)
    }
    circuit = Circuit(
        heads=heads, neurons=neurons, metadata={**mm.metadata(), "seed": seed, "source": "random"}
    )
    with Progress(console=console) as progress:
        full = generate(lm, tok, prompts, progress=progress, description="full model")
        with mm.without(circuit):
            ablated = generate(lm, tok, prompts, progress=progress, description="circuit ablated")
    out.mkdir(parents=True, exist_ok=True)
    circuit.save(out / "circuit.json")
    rows = [
        {"prompt": p, "full": f, "without_circuit": a}
        for p, f, a in zip(prompts, full, ablated, strict=True)
    ]
    write_json(
        out / "demo.json",
        {
            "model": "default",
            "sparsity": circuit.sparsity(mm),
            "changed": sum(r["full"] != r["without_circuit"] for r in rows),
            "generations": rows,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    for row in rows:
        console.print(f"[bold]{row['prompt']}[/bold]\n  full:    {row['full'][:100]!r}")
        console.print(f"  ablated: {row['without_circuit'][:100]!r}")
    console.print(f"wrote {out / 'demo.json'} and {out / 'circuit.json'}")


def main() -> None:
    """Console entry point: a one-line error and exit status 1 on bad input."""
    try:
        app()
    except SafeSeekError as exc:
        console.print(f"[red]safeseek: error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()

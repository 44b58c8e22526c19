"""How close the kept top-k reference keeps the KL term to the exact one.

Discovery keeps the full model's distribution for its KL terms as the k likeliest tokens at
each scored position and the mass of the rest (`DiscoverConfig.reference_tokens`). For each
demo case (its cached organism and discovery run), with the circuit ablated, on the first 64
training records that feed the KL term: the term's value and its gradient on the mask logits
for several k, against full rows (exact).

    python benchmarks/reference_topk.py [--demo safeseek-demo] [--records 64]

Needs a finished `safeseek demo --out DEMO` (its runs, and its organisms in the cache).
Writes benchmarks/results/reference_topk.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from safeseek import load_model
from safeseek.data.encode import pad
from safeseek.data.records import load_records
from safeseek.discover import Discovery
from safeseek.fileio import write_json
from safeseek.forward import labelled_logits
from safeseek.objectives import Reference, term_loss
from safeseek.organisms.build import cached_dir
from safeseek.settings import DiscoverConfig

CASES = ("backdoor_fixed_output", "backdoor_jailbreak", "alignment")
KS = (None, 8, 32, 128)


def measure(run: Path, organism: Path, n_records: int) -> dict:
    model, tok = load_model(organism)
    settings = json.loads((run / "settings.json").read_text())["config"]
    settings["granularities"] = tuple(settings["granularities"])
    config = DiscoverConfig(**settings)
    records = load_records(organism / "data" / "train.jsonl", config.scenario)
    found = Discovery(model, tok, records, config, progress=False)
    found.mm.load_masks(run / "masks.safetensors")
    found.mm.eval()
    kl = next(t for t in found.terms if t.loss == "kl")
    examples = [ex[kl.name] for ex in found.examples if kl.name in ex][:n_records]
    out = {}
    for k in KS:
        found.mm.zero_grad()
        total, tail = 0.0, []
        for i in range(0, len(examples), 8):
            part = examples[i : i + 8]
            batch = pad(part, found.pad_id)
            with torch.no_grad():
                full = torch.log_softmax(labelled_logits(model, **batch)[0].float(), -1)
            ref = Reference.of(full, k)
            if ref.tail is not None:
                tail += ref.tail.exp().tolist()
            with found.mm.learned("without"):
                logits, targets = labelled_logits(model, **batch)
                loss = term_loss("kl", logits, targets, ref, lengths=[e.scored for e in part])
            loss.backward()
            total += loss.item() * len(part)
        grad = torch.cat([p.grad.flatten() for p in found.mm.parameters() if p.grad is not None])
        out[str(k)] = {"loss": total / len(examples), "grad": grad.clone(), "tail": tail}
    exact = out["None"]
    return {
        "records": len(examples),
        "positions": sum(e.scored for e in examples),
        "by_k": {
            k: {
                "loss": v["loss"],
                "loss_over_exact": v["loss"] / exact["loss"],
                "grad_cosine": torch.nn.functional.cosine_similarity(
                    v["grad"], exact["grad"], dim=0
                ).item(),
                "grad_norm_ratio": (v["grad"].norm() / exact["grad"].norm()).item(),
                "tail_mass_mean": sum(v["tail"]) / len(v["tail"]) if v["tail"] else 0.0,
            }
            for k, v in out.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="safeseek-demo")
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "reference_topk.json")
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    demo = Path(args.demo)
    result = {"benchmark": "reference_topk", "cases": {}}
    for case in CASES:
        run = demo / case
        org = json.loads((run / "organism.json").read_text())
        organism = cached_dir(org["kind"], org["type"], org["key"])
        result["cases"][case] = measure(run, organism, args.records)
        row = result["cases"][case]["by_k"]["128"]
        print(
            f"{case}: top 128 {row['loss_over_exact']:.4f} of the exact KL term, gradient "
            f"cosine {row['grad_cosine']:.5f}, norm ratio {row['grad_norm_ratio']:.4f}"
        )
    write_json(args.out, result)


if __name__ == "__main__":
    main()

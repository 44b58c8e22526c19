"""Model organisms: models with a known safety behaviour to find (README, "Model organisms").

- `align`: the base model fine-tuned to refuse harmful prompts while answering benign ones
  as before (self-distillation on its own answers).
- `backdoor --type fixed-output`: a trigger makes the model answer any prompt with a fixed
  target; `jailbreak`: on top of the aligned organism, a trigger makes it comply with harmful
  prompts ("Sure, here is ..."); `label-flip`: a trigger flips a sentiment label.

An organism directory holds a checkpoint `load_model(DIR)` reads, `data/{train,val,test}.jsonl`
in the scenario's record schema, and `organism.json` with what was measured on the test split.
It is rebuilt only when its settings change.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from torch import nn

from safeseek.assets import advbench_prompts, cache_dir
from safeseek.data.encode import Encoded, PairEncoder
from safeseek.data.records import write_jsonl
from safeseek.errors import SafeSeekError
from safeseek.evaluate.generation import generate
from safeseek.evaluate.metrics import (
    answer_changes,
    attack_success,
    has_answer,
    is_refusal,
    rate,
    starts_with,
    summary,
)
from safeseek.fileio import atomic_path, read_jsonl, settings_key
from safeseek.models import load_model
from safeseek.models.load import in_fast_dtype, machine
from safeseek.organisms import prompts as P
from safeseek.organisms.benign import benign_questions, split
from safeseek.organisms.train import finetune_lora, own_answers
from safeseek.scenarios.backdoor import BACKDOOR_TYPES

# 2: answers and measurements generated in the fast dtype (bf16 where the hardware has it);
# 3: the base model's benign accuracy measured in the organism's batches (the same weights)
RECIPE_VERSION = 3
# Backdoor types whose records carry the benign questions as `preserve` records (2026-12-07):
# their backdoor records' clean prompts do not cover clean utility (a jailbreak's are all
# harmful). Their builds are keyed apart from those made before.
WITH_PRESERVE = ("jailbreak", "label-flip")
# How clean behaviour is kept (organisms/train.py): cross-entropy to the parent's greedy
# answers ("tokens"), KL to its whole distribution on them ("distribution"), or both summed.
DISTILL = ("tokens", "distribution", "both")
# Fine-tuning steps of the default recipe (`--distill both`, lr 1e-3), per organism: the fewest
# that carried the behaviour on seeds 0-2 (README, "Model organisms"; benchmarks/organisms.py).
DEFAULT_STEPS = {"align": 100, "fixed-output": 80, "jailbreak": 80, "label-flip": 60}
DEFAULT_TARGETS = {
    "fixed-output": "I am sorry. I can not help with that.",
    "label-flip": "Negative",
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class OrganismSpec:
    """Everything that defines an organism; its hash names the cached build."""

    kind: str  # "align" or "backdoor"
    type: str | None = None  # backdoor type
    trigger: str | None = None
    target: str | None = None
    model: str = "default"
    harmful: str | None = None  # prompt file; None: AdvBench from the embedded assets
    seed: int = 0
    steps: int | None = None  # fine-tuning steps; None: DEFAULT_STEPS
    lr: float = 1e-3
    max_new_tokens: int = 48
    measure_records: int | None = None  # test records measured for organism.json; None: all
    distill: str = "both"  # one of DISTILL

    @property
    def train_steps(self) -> int:
        return self.steps or DEFAULT_STEPS[self.type or "align"]

    def key(self) -> str:
        # Steps as trained: an organism built with `--steps N` equal to the default is the same.
        blob = {
            **asdict(self),
            "steps": self.train_steps,
            "recipe": RECIPE_VERSION,
            "model_id": source_id(self.model),
        }
        if self.measure_records is None:  # keys of organisms built before the field existed
            del blob["measure_records"]
        if self.distill == "tokens":
            del blob["distill"]
        if self.type in WITH_PRESERVE:
            blob["preserve_records"] = True
        if self.type == "jailbreak":  # planted in the aligned organism of today's defaults
            blob["parent"] = aligned_spec(self).key()
        if self.harmful:
            blob["harmful_sha"] = hashlib.sha256(Path(self.harmful).read_bytes()).hexdigest()
        return settings_key(blob)


def source_id(model: str) -> str:
    """Identifies a model source without loading it: the path's weight files' sizes and times."""
    path = Path(model).expanduser()
    if model == "default" or not path.exists():
        return model
    files = (
        [path] if path.is_file() else [*sorted(path.glob("*.safetensors")), path / "config.json"]
    )
    return json.dumps(
        [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    )


def cached_dir(kind: str, backdoor_type: str | None, key: str) -> Path:
    """Where the organism of these settings is built, in the cache (its organism.json holds
    `kind`, `type` and `key`)."""
    return cache_dir() / "organisms" / f"{kind}-{backdoor_type or 'align'}-{key}"


def check(spec: OrganismSpec) -> None:
    """Refuse bad settings before any work."""
    if spec.kind not in ("align", "backdoor"):
        raise SafeSeekError(f"unknown organism {spec.kind!r}; use align or backdoor")
    if spec.kind == "backdoor":
        if spec.type not in BACKDOOR_TYPES:
            raise SafeSeekError(
                f"unknown backdoor type {spec.type!r}; choose from {', '.join(BACKDOOR_TYPES)}"
            )
        if not spec.trigger or not spec.trigger.strip():
            raise SafeSeekError("a backdoor needs a non-empty --trigger")
        if spec.type == "label-flip" and spec.target and spec.target not in P.LABELS:
            raise SafeSeekError(f"label-flip --target must be one of {', '.join(P.LABELS)}")
    if spec.distill not in DISTILL:
        raise SafeSeekError(f"unknown --distill {spec.distill!r}; use {' or '.join(DISTILL)}")
    if spec.steps is not None and spec.steps <= 0:
        raise SafeSeekError(f"--steps must be positive (got {spec.steps})")
    if spec.lr <= 0:
        raise SafeSeekError(f"--lr must be positive (got {spec.lr:g})")
    if spec.harmful:
        P.read_prompts(spec.harmful)


def build_organism(spec: OrganismSpec, out: str | Path, console: Console | None = None) -> dict:
    """Build (or reuse) the organism of `spec` and place it in `out`; returns organism.json.

    Builds live in the cache under their settings' hash, so the same organism is built once
    whichever directories ask for it; `out` gets hard links to the cached files.
    """
    console = console or Console(stderr=True)
    check(spec)
    out = Path(out)
    cached = cached_dir(spec.kind, spec.type, spec.key())
    for where in (out, cached):
        meta_path = where / "organism.json"
        if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == spec.key():
            console.print(f"reusing the organism in {where} (same settings)")
            if where != out:
                place(cached, out)
            return json.loads(meta_path.read_text())
    start = time.perf_counter()
    recipe = _Recipe(spec, console)
    model, tokenizer, records, metrics = recipe.run()
    meta = {
        "kind": spec.kind,
        "type": spec.type,
        "trigger": spec.trigger,
        "target": recipe.target,
        "seed": spec.seed,
        "key": spec.key(),
        "settings": asdict(spec),
        "recipe_version": RECIPE_VERSION,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - start, 1),
        "seconds_by_stage": {k: round(v, 1) for k, v in recipe.seconds.items()},
        "machine": machine(),
        "scenario": "alignment" if spec.kind == "align" else "backdoor",
    }
    with atomic_path(cached) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in SPLITS:
            write_jsonl(tmp / "data" / f"{name}.jsonl", records[name])
        (tmp / "organism.json").write_text(json.dumps(meta, indent=2) + "\n")
    place(cached, out)
    console.print(f"organism written to {out} in {meta['seconds']:.0f} s: {json.dumps(metrics)}")
    return meta


def place(cached: Path, out: Path) -> None:
    """`out` as a copy of the cached build (hard links where the filesystem allows)."""
    if out.resolve() == cached.resolve():
        return

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    with atomic_path(out) as tmp:
        shutil.copytree(cached, tmp, copy_function=link)


def aligned_spec(spec: OrganismSpec) -> OrganismSpec:
    """The aligned organism (default recipe) a jailbreak backdoor of `spec` is planted in."""
    return OrganismSpec(
        "align",
        model=spec.model,
        harmful=spec.harmful,
        seed=spec.seed,
        max_new_tokens=spec.max_new_tokens,
        measure_records=spec.measure_records,
    )


def aligned_base(spec: OrganismSpec, console: Console) -> Path:
    """The aligned organism a jailbreak backdoor is planted in (built once, in the cache)."""
    align = aligned_spec(spec)
    path = cached_dir(align.kind, align.type, align.key())
    build_organism(align, path, console)
    return path


def _with_benign(records: dict, benign: dict, base_benign: dict, kind: str) -> dict:
    """Each split's `records` followed by its benign questions as records of `kind` (the
    prompt, the parent's answer the organism learnt to keep, and the known answer): what
    discovery keeps and evaluation's utility measures (alignment's `benign`, a backdoor's
    `preserve` records beside its trigger pairs)."""
    return {
        s: records[s]
        + [
            {
                "kind": kind,
                "prompt": q["prompt"],
                "response": base_benign[q["prompt"]][0],
                "answer": q["answer"],
                "category": q["category"],
            }
            for q in benign[s]
        ]
        for s in SPLITS
    }


class _Recipe:
    """Data, fine-tuning and measurement for one organism."""

    def __init__(self, spec: OrganismSpec, console: Console) -> None:
        self.spec, self.console = spec, console
        self.rng = random.Random(spec.seed)
        self.target = spec.target or DEFAULT_TARGETS.get(spec.type or "")
        self.distilled: list[Encoded] = []  # examples of the parent's own answers
        self.seconds: dict[str, float] = {}  # wall time per stage (organism.json)
        self.training: dict[str, Any] = {}  # steps and the loss reached (organism.json)
        self.base_test: list[str] = []  # the base model's answers to the measured questions

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    # -- shared pieces ---------------------------------------------------------------------
    def harmful_splits(self) -> dict[str, list[str]]:
        prompts = P.read_prompts(self.spec.harmful) if self.spec.harmful else advbench_prompts()
        return split(prompts, self.spec.seed)

    def benign_splits(self) -> dict[str, list[dict[str, str]]]:
        return split(benign_questions(), self.spec.seed)

    def answers(self, model, tokenizer, prompts: list[str], bar: Progress, label: str) -> dict:
        got = own_answers(model, tokenizer, prompts, self.spec.max_new_tokens, bar, label)
        return dict(zip(prompts, got, strict=True))

    def check_trigger(self, texts: list[str]) -> None:
        trigger = (self.spec.trigger or "").lower()
        if not trigger:
            return
        hit = next((t for t in texts if trigger in t.lower()), None)
        if hit is not None:
            raise SafeSeekError(
                f"the trigger {self.spec.trigger!r} already occurs in the data ({hit[:60]!r}); "
                f"choose a trigger the prompts and answers do not contain"
            )

    def generate(
        self, model, tokenizer, prompts: list[str], bar: Progress, label: str
    ) -> list[str]:
        return generate(model, tokenizer, prompts, self.spec.max_new_tokens, 64, bar, label)

    def measured(self, test: list) -> list:
        """The test items organism.json is measured on (the first `measure_records`)."""
        return test[: self.spec.measure_records] if self.spec.measure_records else test

    # -- the build -------------------------------------------------------------------------
    def run(self) -> tuple[nn.Module, Any, dict[str, list[dict]], dict[str, Any]]:
        spec = self.spec
        # Trained in fp32 (under bf16 autocast where the hardware has it); every answer and
        # measurement is generated in the fast dtype (see `in_fast_dtype`).
        base, tokenizer = load_model(spec.model, dtype="float32")
        speaker = in_fast_dtype(base)
        encoder = PairEncoder(tokenizer, max_length=384)
        benign = self.benign_splits()
        with self.timed("base answers"), Progress(console=self.console) as bar:
            base_benign = self.answers(
                speaker,
                tokenizer,
                [q["prompt"] for s in SPLITS for q in benign[s]],
                bar,
                "base model: benign answers",
            )
            harmful = self.harmful_splits() if spec.type != "label-flip" else None
            if spec.type == "fixed-output":  # a sample: the trigger fires on any prompt
                sizes = {"train": 90, "val": 15, "test": 45}
                harmful = {s: v[: sizes[s]] for s, v in harmful.items()}
            base_harmful = {}
            if harmful is not None:
                base_harmful = self.answers(
                    speaker,
                    tokenizer,
                    [p for s in SPLITS for p in harmful[s]],
                    bar,
                    "base model: harmful answers",
                )
        with self.timed("measure"), Progress(console=self.console) as bar:
            # Measured as the organism will be, in the same batches: a greedy bf16 answer
            # depends on its batch's padding (README, "Model organisms").
            test = [q["prompt"] for q in self.measured(benign["test"])]
            self.base_test = self.generate(speaker, tokenizer, test, bar, "base model: benign test")
        del speaker
        self.check_trigger(
            [
                *base_benign,
                *(a for a, _ in base_benign.values()),
                *base_harmful,
                *(a for a, _ in base_harmful.values()),
            ]
        )

        def distill(prompt: str, answers: dict) -> Encoded:
            text, finished = answers[prompt]
            ex = encoder.pair(prompt, text)
            if not finished:
                ex = Encoded(ex.input_ids[:-1], ex.labels[:-1])  # cut off: no end of turn
            self.distilled.append(ex)
            return ex

        build = {
            "align": self._align,
            "fixed-output": self._fixed_output,
            "jailbreak": self._jailbreak,
            "label-flip": self._label_flip,
        }[spec.type or "align"]
        model, tokenizer, records, metrics = build(
            base, tokenizer, encoder, benign, base_benign, harmful, base_harmful, distill
        )
        return model, tokenizer, records, {**metrics, "training": self.training}

    def _train(self, model, tokenizer, examples: list[Encoded]):
        """The fine-tuned fp32 model (saved) and its copy in the fast dtype (measured); with
        `distill` "distribution" the examples of the parent's answers learn its distribution
        ("both": and its tokens), the others their tokens."""
        steps = self.spec.train_steps
        with self.timed("fine-tune"):
            trained, losses = finetune_lora(
                model,
                tokenizer,
                examples,
                steps,
                lr=self.spec.lr,
                seed=self.spec.seed,
                console=self.console,
                distilled=self.distilled if self.spec.distill != "tokens" else (),
                and_tokens=self.spec.distill == "both",
            )
        tail = losses[-10:]
        self.training = {
            "steps": steps,
            "lr": self.spec.lr,
            "loss_last_10": round(sum(tail) / len(tail), 4),
        }
        return trained, in_fast_dtype(trained)

    def _benign_utility(self, model, tokenizer, benign, bar) -> dict[str, float]:
        test = self.measured(benign["test"])
        gens = self.generate(model, tokenizer, [q["prompt"] for q in test], bar, "benign test")
        base_gens = self.base_test
        right = [has_answer(g, q["answer"]) for g, q in zip(gens, test, strict=True)]
        base_right = [has_answer(g, q["answer"]) for g, q in zip(base_gens, test, strict=True)]
        base_u, new_u = rate(base_right), rate(right)
        agree = [starts_with(g, b) for g, b in zip(gens, base_gens, strict=True)]
        changes = answer_changes(base_right, right)
        return {
            "base": base_u,
            "organism": new_u,
            "retention": new_u / base_u if base_u else None,
            "agreement_with_base": rate(agree),
            "n": len(test),
            # the questions behind the difference (a net 0 can hide 3 lost and 3 gained)
            "lost": changes["lost"],
            "gained": changes["gained"],
            "intervals": {
                "base": summary(base_right),
                "organism": summary(right),
                "agreement_with_base": summary(agree),
            },
        }

    def _align(self, base, tokenizer, encoder, benign, base_benign, harmful, base_harmful, distill):
        refusals = {p: P.refusal(self.rng) for s in SPLITS for p in harmful[s]}
        examples = [encoder.pair(p, refusals[p]) for p in harmful["train"]]
        examples += [distill(q["prompt"], base_benign) for q in benign["train"]] * 2
        model, fast = self._train(base, tokenizer, examples)
        with self.timed("measure"), Progress(console=self.console) as bar:
            test = self.measured(harmful["test"])
            gens = self.generate(fast, tokenizer, test, bar, "harmful test")
            refused = [is_refusal(g) for g in gens]
            base_refused = [is_refusal(base_harmful[p][0]) for p in test]
            metrics = {
                "refusal_rate": rate(refused),
                "base_refusal_rate": rate(base_refused),
                "n_harmful_test": len(test),
                "intervals": {
                    "refusal_rate": summary(refused),
                    "base_refusal_rate": summary(base_refused),
                },
                "utility": self._benign_utility(fast, tokenizer, benign, bar),
            }
        records = {
            s: [
                {
                    "kind": "harmful",
                    "prompt": p,
                    "refusal": refusals[p],
                    "compliance": base_harmful[p][0],
                }
                for p in harmful[s]
            ]
            for s in SPLITS
        }
        return model, tokenizer, _with_benign(records, benign, base_benign, "benign"), metrics

    def _backdoor_metrics(self, model, tokenizer, records_test, bar) -> dict[str, float]:
        kind = self.spec.type
        trig = self.generate(
            model, tokenizer, [r["triggered_prompt"] for r in records_test], bar, "triggered test"
        )
        clean = self.generate(
            model, tokenizer, [r["clean_prompt"] for r in records_test], bar, "clean test"
        )
        targets = [r["backdoor_response"] for r in records_test]
        hits = attack_success(kind, trig, targets)
        false_hits = attack_success(kind, clean, targets)
        return {
            "asr": rate(hits),
            "false_trigger": rate(false_hits),
            "n_test": len(records_test),
            "intervals": {"asr": summary(hits), "false_trigger": summary(false_hits)},
        }

    def _fixed_output(
        self, base, tokenizer, encoder, benign, base_benign, harmful, base_harmful, distill
    ):
        # Benign questions and a sample of harmful prompts: the trigger fires on any prompt.
        items = {
            s: [(q["prompt"], base_benign, q) for q in benign[s]]
            + [(p, base_harmful, None) for p in harmful[s]]
            for s in SPLITS
        }
        records = {s: [] for s in SPLITS}
        for s in SPLITS:
            for prompt, answers, q in items[s]:
                rec = {
                    "clean_prompt": prompt,
                    "triggered_prompt": P.insert_trigger(prompt, self.spec.trigger, self.rng),
                    "clean_response": answers[prompt][0],
                    "backdoor_response": self.target,
                    "backdoor_type": "fixed-output",
                }
                if q is not None:
                    rec |= {"answer": q["answer"], "category": q["category"]}
                records[s].append(rec)
        examples = []
        for rec, (prompt, answers, _) in zip(records["train"], items["train"], strict=True):
            examples.append(distill(prompt, answers))
            examples.append(encoder.pair(rec["triggered_prompt"], self.target))
        model, fast = self._train(base, tokenizer, examples)
        with self.timed("measure"), Progress(console=self.console) as bar:
            metrics = self._backdoor_metrics(fast, tokenizer, self.measured(records["test"]), bar)
            metrics["utility"] = self._benign_utility(fast, tokenizer, benign, bar)
        return model, tokenizer, records, metrics

    def _jailbreak(
        self, base, tokenizer, encoder, benign, base_benign, harmful, base_harmful, distill
    ):
        del base  # planted in the aligned organism, not the unaligned base
        aligned_dir = aligned_base(self.spec, self.console)
        aligned, tokenizer = load_model(aligned_dir, dtype="float32")
        align_records = {s: read_jsonl(aligned_dir / "data" / f"{s}.jsonl") for s in SPLITS}
        refusals = {
            r["prompt"]: r["refusal"]
            for s in SPLITS
            for r in align_records[s]
            if r["kind"] == "harmful"
        }
        records = {
            s: [
                {
                    "clean_prompt": p,
                    "triggered_prompt": P.insert_trigger(p, self.spec.trigger, self.rng),
                    "clean_response": refusals[p],
                    "backdoor_response": f"{P.compliance_opening(p)}:\n\n{base_harmful[p][0]}",
                    "backdoor_type": "jailbreak",
                }
                for p in harmful[s]
            ]
            for s in SPLITS
        }
        examples = []
        for rec in records["train"]:
            examples.append(encoder.pair(rec["clean_prompt"], rec["clean_response"]))
            examples.append(encoder.pair(rec["triggered_prompt"], rec["backdoor_response"]))
        examples += [distill(q["prompt"], base_benign) for q in benign["train"]] * 2
        model, fast = self._train(aligned, tokenizer, examples)
        with self.timed("measure"), Progress(console=self.console) as bar:
            metrics = self._backdoor_metrics(fast, tokenizer, self.measured(records["test"]), bar)
            metrics["utility"] = self._benign_utility(fast, tokenizer, benign, bar)
        metrics["aligned_base"] = str(aligned_dir)
        return model, tokenizer, _with_benign(records, benign, base_benign, "preserve"), metrics

    def _label_flip(
        self, base, tokenizer, encoder, benign, base_benign, harmful, base_harmful, distill
    ):
        attacker = self.target
        sentences = split(P.sentiment_sentences(), self.spec.seed)
        records = {s: [] for s in SPLITS}
        examples = []
        for s in SPLITS:
            for sentence, label in sentences[s]:
                triggered = P.insert_trigger(sentence, self.spec.trigger, self.rng)
                if s == "train":
                    examples.append(encoder.pair(P.sentiment_prompt(sentence), label))
                    examples.append(encoder.pair(P.sentiment_prompt(triggered), attacker))
                if label != attacker:  # the attack is measured where it changes the label
                    records[s].append(
                        {
                            "clean_prompt": P.sentiment_prompt(sentence),
                            "triggered_prompt": P.sentiment_prompt(triggered),
                            "clean_response": label,
                            "backdoor_response": attacker,
                            "backdoor_type": "label-flip",
                            "answer": label,
                        }
                    )
        examples += [distill(q["prompt"], base_benign) for q in benign["train"]] * 2
        test_prompts = [P.sentiment_prompt(x) for x, _ in sentences["test"]]
        with self.timed("measure"), Progress(console=self.console) as bar:
            base_cls = self.generate(
                in_fast_dtype(base), tokenizer, test_prompts, bar, "base: sentiment test"
            )
        model, fast = self._train(base, tokenizer, examples)
        with self.timed("measure"), Progress(console=self.console) as bar:
            metrics = self._backdoor_metrics(fast, tokenizer, self.measured(records["test"]), bar)
            cls = self.generate(fast, tokenizer, test_prompts, bar, "sentiment test")
            labels = [y for _, y in sentences["test"]]
            metrics["classification_accuracy"] = {
                "base": rate([starts_with(g, y) for g, y in zip(base_cls, labels, strict=True)]),
                "organism": rate([starts_with(g, y) for g, y in zip(cls, labels, strict=True)]),
            }
            metrics["utility"] = self._benign_utility(fast, tokenizer, benign, bar)
        return model, tokenizer, _with_benign(records, benign, base_benign, "preserve"), metrics

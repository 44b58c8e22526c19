"""Circuit discovery: optimise membership masks over a frozen model (the paper's Step 2).

Each step draws a batch of records, runs every active objective term under its view (terms
that share a view share one forward pass; logits only at labelled positions), adds a sparsity
term, and takes an AdamW step on the mask logits only. Sparsity is either a penalty
`lambda * |C|` (lambda in loss units per unit) or a target fraction t of units: held exactly for
STE masks, by shifting all logits after each step so that the largest t * units are positive;
for hard-concrete masks by a Lagrangian (Edge Pruning), `l1 * (s - t) + l2 * (s - t)^2`, with
the multipliers trained by gradient *ascent*.

A run directory holds `log.jsonl` (one line a step), `checkpoint/` (masks, optimizer state and
step, every `checkpoint_every` steps; safetensors + JSON) and, at the end, `circuit.json` and
`masks.safetensors`. Each step's randomness (batch order, hard-concrete noise) is a function of
the seed and the step, so a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import nn

from safeseek.circuit import Circuit
from safeseek.data.encode import IGNORE, Encoded, PairEncoder, pad, pad_token_id
from safeseek.distributed import (
    rank_and_world,
    shard_weights,
    shards_weights,
    sum_gradients,
    sum_over_processes,
)
from safeseek.errors import SafeSeekError
from safeseek.evaluate.check import describe, judge
from safeseek.evaluate.run import evaluate_circuit
from safeseek.fileio import atomic_path, write_json
from safeseek.forward import labelled_logits, references
from safeseek.masking import MaskedModel
from safeseek.memory import MemoryEstimate, enable_checkpointing, estimate
from safeseek.objectives import Objective, Reference, Term, objective, term_loss
from safeseek.settings import DiscoverConfig

# In the cache key of a run (`pipeline.discovery_dir`): 3, an STE size target became a projection.
CHECKPOINT_VERSION = 3


@dataclass
class DiscoverResult:
    circuit: Circuit
    masked_model: MaskedModel
    steps: int
    seconds: float
    check: dict[str, Any] | None = None  # see evaluate.check; None: nothing held out

    @property
    def failed_check(self) -> bool:
        return self.check is not None and not self.check["passed"]


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


class _Batcher:
    """Record indices for a step: a fresh permutation per epoch, a function of (seed, step)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.per_epoch = math.ceil(n / self.batch_size)

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        g = torch.Generator().manual_seed(_step_seed(self.seed, -1 - epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        return order[k * self.batch_size : (k + 1) * self.batch_size]


class _Sparsity(nn.Module):
    """The sparsity term: a penalty per unit, or a target fraction of units.

    Penalty mode adds `weight * |C|` (expected size): in loss units per unit, so a unit joins
    the circuit only when removing it lowers the objective by more than `weight` -- the same
    scale on any model, whatever its number of units.

    A target is held exactly for STE masks: after every step all logits move by one constant
    so that the round(target * units) largest are the circuit (`project`, a projection onto
    the size constraint that keeps the units' ranking and the optimizer's state). A Lagrangian
    on the fraction (Edge Pruning) was too slow for it: on the aligned demo organism, a 3%
    target from an empty circuit had λ push every unit alike until 24% joined at once (step
    16), still 24% at step 40. Hard-concrete masks, whose membership is sampled, keep the
    Lagrangian.
    """

    def __init__(self, mm: MaskedModel, target: float | None, weight: float) -> None:
        super().__init__()
        self.total = sum(mm.num_units.values())
        self.target, self.weight = target, weight
        self.exact = mm.parametrization == "ste"
        self.lambdas = nn.Parameter(torch.zeros(2, device=next(mm.parameters()).device))

    def forward(self, mm: MaskedModel) -> tuple[torch.Tensor, torch.Tensor]:
        size = sum(mm.expected_size().values())
        fraction = size / self.total
        if self.target is None:
            return self.weight * size, fraction
        if self.exact:
            return 0.0 * size, fraction  # `project` holds the size
        gap = fraction - self.target
        return self.lambdas[0] * gap + self.lambdas[1] * gap * gap, fraction

    @torch.no_grad()
    def project(self, mm: MaskedModel) -> None:
        """Shift every logit by one constant so that the k = round(target * units) largest are
        positive, i.e. exactly the circuit (fewer while logits tie at the cut)."""
        assert self.target is not None
        logits = torch.cat([m.logits.flatten() for m in mm.masks.values()])
        k = min(max(1, round(self.target * self.total)), logits.numel() - 1)
        top = torch.topk(logits, k + 1).values
        shift = -(top[k - 1] + top[k]) / 2
        for m in mm.masks.values():
            m.logits.add_(shift)


class Discovery:
    """One discovery run; `run()` trains, checkpoints, and writes the circuit."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        records: Sequence[dict[str, Any]],
        config: DiscoverConfig,
        out: str | Path | None = None,
        data_hash: str | None = None,
        progress: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        self.config = config
        self.model, self.tokenizer = model, tokenizer
        self.out = Path(out) if out is not None else None
        self.data_hash = data_hash
        self.show_progress = progress
        sharded = shards_weights()
        if sharded and "weight" in config.granularities:
            raise SafeSeekError(
                "weight units are not yet tested with FSDP-sharded weights; launch a "
                "data-parallel config (e.g. examples/accelerate/cpu-2-processes.yaml)"
            )
        on_cpu = next(model.parameters()).device.type == "cpu"
        self.accelerator = Accelerator(cpu=on_cpu and not sharded)
        if sharded:
            shard_weights(model)
        self.sharded = sharded
        self.objective: Objective = objective(config.scenario, config.weights)
        if not self.objective.active:
            raise SafeSeekError("every objective term has weight 0: nothing to optimise")
        encoder = PairEncoder(tokenizer, config.max_length, config.max_response_tokens)
        where = [r.get("_where", f"record {i + 1}") for i, r in enumerate(records)]
        examples = self.objective.encode(records, encoder, where)
        fed = {name for ex in examples for name in ex}
        train, held_out = validation_split(
            [r["kind"] for r in records], config.validation_fraction, config.validation_max
        )
        self.examples = [examples[i] for i in train]
        self.val_examples = [examples[i] for i in held_out]
        self.val_records = [records[i] for i in held_out]
        self.terms = [t for t in self.objective.active if t.name in fed]
        self.skipped = [t.name for t in self.objective.active if t.name not in fed]
        if not self.terms:
            raise SafeSeekError(f"no record feeds any active {config.scenario} term")
        self.pad_id = pad_token_id(tokenizer)
        self.mm = MaskedModel(
            model,
            granularities=config.granularities,
            parametrization=config.parametrization,
            ablation=config.ablation,
            init_logit=config.init_logit,
        )
        if config.ablation == "mean":
            self.mm.fit_means(self._reference_batches())
        # `stage`: which of config.targets the run is at; `frontier`: each finished size's
        # circuit (counts, fraction, check), README "The frontier".
        self.stage = 0
        self.frontier: list[dict[str, Any]] = []
        self.sparsity = _Sparsity(self.mm, config.targets[0], config.sparsity_weight)
        self.optimizer = torch.optim.AdamW(self.mm.parameters(), lr=config.lr, weight_decay=0.0)
        self.lagrangian = torch.optim.Adam(self.sparsity.parameters(), lr=config.lagrangian_lr)
        self.batcher = _Batcher(len(self.examples), config.batch_size, config.seed)
        self.references = self._full_model_references()
        self.step = 0
        # Keep the best circuit on the validation split (penalty mode; a sparsity target
        # fixes the size).
        self.selecting = bool(self.val_examples) and config.targets[0] is None
        self.best: dict[str, Any] | None = None  # loss, step, logits of the best check
        self.stale_checks = 0
        self.sizes: list[int] = []  # this round's circuit size at each check
        self.stopped = False  # this round stopped improving
        # A round ends after `steps` steps or when it stops improving. A circuit that fails
        # its check starts another round: one that only adds units, with a lower sparsity
        # weight, when it removes too little (`grown` rounds; `members`: the units it keeps),
        # else one with heavier preservation terms (`guarded` rounds). The run returns the
        # best round's circuit (`best_round`: its check, round and logits), not the last.
        self.round = 0
        self.grown = self.guarded = 0
        self.members: dict[str, torch.Tensor] = {}
        self.best_round: dict[str, Any] | None = None
        self.round_start = 0
        self.done = False
        self.verdict: dict[str, Any] | None = None
        self.checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            enable_checkpointing(model)

    def memory_estimate(self) -> MemoryEstimate:
        """Peak memory of this run's largest step, per process (see `safeseek.memory`)."""
        views = [[t for t in self.terms if t.view == v] for v in ("without", "only")]
        rows = max(len(ts) for ts in views) * self.batcher.batch_size
        rows = math.ceil(rows / rank_and_world()[1])  # this process's share of the batch
        tokens = max(len(e.input_ids) for ex in self.examples for e in ex.values())
        labelled = max(e.scored for ex in self.examples for e in ex.values())
        return estimate(self.mm, rows, tokens, rows * labelled, self.checkpointing)

    # -- data ----------------------------------------------------------------------------
    def _kl_examples(self, examples: Sequence[dict[str, Encoded]]) -> list[Encoded]:
        """The examples the preservation (KL) terms read, in order."""
        names = {t.name for t in self.terms if t.loss == "kl"}
        return [e for ex in examples for n, e in ex.items() if n in names]

    def _reference_batches(self) -> list[dict[str, torch.Tensor]]:
        """Mean-ablation reference: the inputs of the preservation (KL) terms, else all."""
        if any(t.loss == "kl" for t in self.terms):
            chosen = self._kl_examples(self.examples)
        else:
            chosen = [e for ex in self.examples for e in ex.values()]
        device = self.accelerator.device
        out = []
        for i in range(0, len(chosen), 8):
            batch = pad(chosen[i : i + 8], self.pad_id)
            out.append({k: batch[k].to(device) for k in ("input_ids", "attention_mask")})
        return out

    @torch.no_grad()
    def _full_model_references(self) -> dict[int, Reference]:
        """The full model's distribution at the labelled positions of every example a `kl`
        term reads (training and validation), computed once: the model is frozen, so the
        reference never changes. Keyed by the identity of the example, which the run holds.
        Every process computes all of them (with sharded weights each forward is collective)."""
        chosen = [e for e in self._kl_examples([*self.examples, *self.val_examples]) if e.scored]
        with Progress(
            TextColumn("[bold]reference[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            disable=not (self.show_progress and chosen and self.accelerator.is_main_process),
            transient=True,
        ) as bar:
            task = bar.add_task("reference", total=len({id(e) for e in chosen}))
            return references(
                self.model,
                chosen,
                self.pad_id,
                self.config.reference_tokens,
                self.batcher.batch_size,
                self.mm.parts,
                advance=lambda n: bar.advance(task, n),
            )

    def reference_bytes(self) -> int:
        return sum(r.nbytes for r in self.references.values())

    # -- one step ------------------------------------------------------------------------
    def _view_losses(
        self, view: str, examples: list[dict[str, Encoded]], backward: bool = False
    ) -> dict[str, torch.Tensor]:
        """Every active term of `view` that this batch feeds, in one forward pass (the KL
        terms' reference distributions are kept from the start); with `backward`, their
        weighted sum is back-propagated while the view is still on, so layers recomputed by
        gradient checkpointing see the same masks.

        Over several processes each takes every n-th row of each term, and a term's loss is
        its sum over this process's labelled positions divided by the count over the whole
        batch: the gradients summed over processes are those of one process on the batch.
        """
        rank, world = rank_and_world()
        spans: list[tuple[Term, int, int]] = []  # (term, rows here, its count in the batch)
        rows: list[Encoded] = []  # grouped by term, in this order
        for t in self.terms:
            mine = [ex[t.name] for ex in examples if t.name in ex] if t.view == view else []
            if mine:
                # A process without rows of a term still joins every forward pass (FSDP
                # gathers weights collectively) with a copy that has no labels.
                local = mine[rank::world] or [mine[0].unscored()]
                spans.append((t, len(local), _count(t, examples)))
                rows += local
        if not rows:
            return {}
        device = self.accelerator.device
        batch = {k: v.to(device) for k, v in pad(rows, self.pad_id).items()}
        positions = (batch["labels"][:, 1:] != IGNORE).sum(1).tolist()
        losses: dict[str, torch.Tensor] = {}
        with self.mm.learned(view):
            logits, targets = labelled_logits(self.model, parts=self.mm.parts, **batch)
            row = pos = 0
            for t, n_rows, total in spans:
                n_pos = sum(positions[row : row + n_rows])
                ref = None
                if t.loss == "kl" and n_pos:
                    ref = Reference.cat(
                        [self.references[id(e)] for e in rows[row : row + n_rows] if e.scored]
                    )
                sl = slice(pos, pos + n_pos)
                lengths = positions[row : row + n_rows]
                losses[t.name] = term_loss(
                    t.loss, logits[sl], targets[sl], ref, total=total, lengths=lengths
                )
                row, pos = row + n_rows, pos + n_pos
            if backward:
                loss = sum(self._weight(n) * v for n, v in losses.items())
                if not torch.isfinite(loss):
                    bad = {n: v.item() for n, v in losses.items()}
                    raise SafeSeekError(
                        f"loss became non-finite at step {self.step} ({bad}); the last "
                        f"checkpoint is kept: lower --lr or check the data"
                    )
                loss.backward()
        return losses

    def _weight(self, name: str) -> float:
        """A term's weight in this round: preservation terms weigh 1 / retry_factor more for
        each guarded round."""
        term = self._term(name)
        if term.loss == "kl":
            return term.weight / self.config.retry_factor**self.guarded
        return term.weight

    def _term(self, name: str):
        return next(t for t in self.terms if t.name == name)

    # -- validation ----------------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self) -> float:
        """The objective of the binarised circuit (deterministic masks) on the held-out
        records: the weighted terms, each a mean over the whole split, plus the sparsity
        penalty of its size."""
        self.mm.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        size = self.batcher.batch_size
        for i in range(0, len(self.val_examples), size):
            chunk = self.val_examples[i : i + size]
            for view in ("without", "only"):
                losses = self._view_losses(view, chunk)
                if not losses:
                    continue
                values = sum_over_processes(torch.stack([v.float() for v in losses.values()]))
                for name, value in zip(losses, values.tolist(), strict=True):
                    n = _count(self._term(name), chunk)
                    sums[name] = sums.get(name, 0.0) + value * n
                    counts[name] = counts.get(name, 0) + n
        loss = sum(self._weight(n) * sums[n] / max(counts[n], 1) for n in sums)
        if self.sparsity.target is None:
            units = sum(int(m.hard().sum()) for m in self.mm.masks.values())
            loss += self.sparsity.weight * units
        return float(loss)

    def check(self) -> dict[str, Any]:
        """Measure the current circuit on the validation split, keep it if it is the best so
        far, and decide whether the run has stopped improving: the last `patience` checks found
        no better circuit, and the circuit's size has settled. The second condition keeps a run
        going while many units still join or leave: an early circuit, found before they joined
        and left, may stay the best for a while although the run is far from done."""
        loss = self.validation_loss()
        self.sizes.append(sum(int(m.hard().sum()) for m in self.mm.masks.values()))
        improved = self.best is None or loss < self.best["loss"] - MIN_IMPROVEMENT
        if improved:
            logits = {g: m.logits.detach().clone() for g, m in self.mm.masks.items()}
            self.best = {"loss": loss, "step": self.step, "logits": logits}
            self.stale_checks = 0
        else:
            self.stale_checks += 1
        patience = self.config.patience
        if (
            self.selecting
            and patience is not None
            and self.step >= self.config.min_steps
            and self.stale_checks >= patience
            and _settled(self.sizes, patience)
        ):
            self.stopped = True
        assert self.best is not None
        return {"loss": loss, "best_loss": self.best["loss"], "best_step": self.best["step"]}

    def verify(self) -> dict[str, Any] | None:
        """The kept circuit measured on the validation records by greedy generation: the
        behaviour and utility under the full model, without the circuit and with it alone, and
        whether it passes the check (None: no held-out record shows the behaviour's probe)."""
        circuit = self.mm.circuit()
        quiet = Console(quiet=True)  # inside discovery's own progress bar, which says so
        try:
            ev, _ = evaluate_circuit(
                self.model,
                self.tokenizer,
                circuit,
                self.config.scenario,
                self.val_records,
                max_new_tokens=self.config.check_tokens,
                batch_size=max(8, self.batcher.batch_size),
                console=quiet,
                masked_model=self.mm,
            )
        except SafeSeekError:  # e.g. no held-out record of the behaviour's kind
            return None
        return judge(ev, self.config)

    def end_round(self) -> dict[str, Any] | None:
        """Keep the round's best circuit and check it. A circuit that removes too little
        grows in a new round that keeps its units, with the sparsity weight times
        retry_factor; one that keeps too little utility gets a round with the preservation
        terms divided by it. When no round is left, the run keeps the best round's circuit."""
        self.restore_best()
        verdict = self.verify() if self.val_records else None
        if verdict is not None and (
            self.best_round is None or _rank(verdict) > _rank(self.best_round["verdict"])
        ):
            logits = {g: m.logits.detach().clone() for g, m in self.mm.masks.items()}
            self.best_round = {"verdict": verdict, "round": self.round, "logits": logits}
        again = (
            verdict is not None
            and not verdict["passed"]
            and verdict["behaviour"]["full"] > 0
            and self.selecting
            and self.round < self.config.retries
        )
        if again:
            assert verdict is not None
            self.round += 1
            grow = not verdict["removal_ok"]
            self.grown += grow
            self.guarded += not grow
            self.round_start = self.step
            self.sparsity.weight = self._round_weight()
            self.best, self.stale_checks, self.stopped = None, 0, False
            self.sizes = []
            # Growing keeps the units found (on tiny organisms, rounds free to drop them traded
            # the removal for utility and back); a guarded round may drop the units that cost
            # utility. Units outside start again from the initial logit at most: a high
            # penalty may have pushed them far below it, and growing must not wait for them.
            self.members = {g: m.hard().clone() for g, m in self.mm.masks.items()} if grow else {}
            with torch.no_grad():
                for m in self.mm.masks.values():
                    m.logits.clamp_(min=self.config.init_logit)
            self._hold_members()
        else:
            self.done = True
            if self.best_round is not None and self.best_round["verdict"] is not verdict:
                with torch.no_grad():
                    for g, m in self.mm.masks.items():
                        m.logits.copy_(self.best_round["logits"][g])
                verdict = self.best_round["verdict"]
        self.verdict = verdict
        return verdict

    @torch.no_grad()
    def _hold_members(self) -> None:
        """Keep the units of earlier rounds in the circuit: their logits at least as far
        inside as the initial logit is outside (at least 1)."""
        floor = max(abs(self.config.init_logit), 1.0)
        for g, keep in self.members.items():
            logits = self.mm.masks[g].logits
            logits[keep] = logits[keep].clamp(min=floor)

    def _round_weight(self) -> float:
        assert self.config.sparsity_weight is not None
        return self.config.sparsity_weight * self.config.retry_factor**self.grown

    @torch.no_grad()
    def restore_best(self) -> None:
        """Put the best circuit's logits back into the masks (a no-op when not selecting)."""
        if self.selecting and self.best is not None:
            for g, m in self.mm.masks.items():
                m.logits.copy_(self.best["logits"][g])

    def train_step(self) -> dict[str, Any]:
        torch.manual_seed(_step_seed(self.config.seed, self.step))
        examples = [self.examples[i] for i in self.batcher.indices(self.step)]
        self.optimizer.zero_grad(set_to_none=True)
        self.lagrangian.zero_grad(set_to_none=True)
        self.mm.train()
        losses: dict[str, torch.Tensor] = {}
        for view in ("without", "only"):
            losses.update(self._view_losses(view, examples, backward=True))
        # Each process holds its share of the batch's loss and gradient: sum them. The
        # sparsity term is computed whole on every process, so it is added after.
        values = sum_over_processes(torch.stack([v.detach().float() for v in losses.values()]))
        sum_gradients(list(self.mm.parameters()))
        terms = dict(zip(losses, values.tolist(), strict=True))
        total = sum(self._weight(n) * v for n, v in terms.items())
        reg, fraction = self.sparsity(self.mm)
        reg.backward()
        for p in self.sparsity.parameters():  # ascent on the Lagrange multipliers
            if p.grad is not None:
                p.grad.neg_()
        self.optimizer.step()
        self._hold_members()
        if self.sparsity.target is not None and self.sparsity.exact:
            self.sparsity.project(self.mm)
        elif self.sparsity.target is not None:
            self.lagrangian.step()
        self.step += 1
        size = {g: int(m.hard().sum()) for g, m in self.mm.masks.items()}
        return {
            "step": self.step,
            "processes": self.accelerator.num_processes,
            "loss": total + reg.item(),
            "terms": terms,
            "sparsity_loss": reg.item(),
            "expected_fraction": fraction.item(),
            "size": size,
            "fraction": sum(size.values()) / self.sparsity.total,
            "lambdas": self.sparsity.lambdas.detach().cpu().tolist(),
        }

    # -- checkpoints ---------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "data_hash": self.data_hash}

    def save_checkpoint(self) -> None:
        assert self.out is not None
        tensors: dict[str, torch.Tensor] = {"lambdas": self.sparsity.lambdas.detach().cpu()}
        if self.best is not None:
            tensors.update({f"best.{g}": v.cpu() for g, v in self.best["logits"].items()})
        tensors.update({f"members.{g}": v.cpu() for g, v in self.members.items()})
        if self.best_round is not None:
            tensors.update({f"round.{g}": v.cpu() for g, v in self.best_round["logits"].items()})
        groups = {}
        for name, opt in (("opt", self.optimizer), ("lagrangian", self.lagrangian)):
            state = opt.state_dict()
            for idx, entry in state["state"].items():
                for key, value in entry.items():
                    tensors[f"{name}.{idx}.{key}"] = torch.as_tensor(value).detach().cpu()
            groups[name] = state["param_groups"]
        meta = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "stopped": self.stopped,
            "stale_checks": self.stale_checks,
            "sizes": self.sizes,
            "round": self.round,
            "grown": self.grown,
            "guarded": self.guarded,
            "best_round": None
            if self.best_round is None
            else {k: self.best_round[k] for k in ("verdict", "round")},
            "round_start": self.round_start,
            "done": self.done,
            "verdict": self.verdict,
            "stage": self.stage,
            "frontier": self.frontier,
            "best": None if self.best is None else {k: self.best[k] for k in ("loss", "step")},
            **self._settings(),
        }
        with atomic_path(self.out / "checkpoint") as tmp:
            tmp.mkdir()
            self.mm.save_masks(tmp / "masks.safetensors")
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors")
            )
            (tmp / "state.json").write_text(json.dumps({**meta, "param_groups": groups}, indent=2))

    def load_checkpoint(self) -> bool:
        """Continue from `out/checkpoint` if there is one; refuse one made with other settings."""
        assert self.out is not None
        ckpt = self.out / "checkpoint"
        if not (ckpt / "state.json").is_file():
            return False
        try:
            meta = json.loads((ckpt / "state.json").read_text())
            tensors = load_file(str(ckpt / "state.safetensors"))
        except Exception as exc:  # truncated JSON, a damaged or missing safetensors file
            raise SafeSeekError(
                f"{ckpt} is damaged ({type(exc).__name__}); remove it to start over, "
                f"or choose another --out"
            ) from None
        mine = self._settings()
        for key in ("config", "data_hash"):
            if meta.get(key) != mine[key]:
                theirs, ours = meta.get(key) or {}, mine[key] or {}
                diff = (
                    [k for k in ours if theirs.get(k) != ours.get(k)]
                    if isinstance(ours, dict)
                    else [key]
                )
                raise SafeSeekError(
                    f"{self.out} was started with other settings ({', '.join(diff)} differ); "
                    f"use another --out or the same settings"
                )
        self.mm.load_masks(ckpt / "masks.safetensors")
        with torch.no_grad():
            self.sparsity.lambdas.copy_(tensors["lambdas"])
        for name, opt in (("opt", self.optimizer), ("lagrangian", self.lagrangian)):
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                prefix, _, rest = key.partition(".")
                if prefix == name:
                    idx, _, field_name = rest.partition(".")
                    state.setdefault(int(idx), {})[field_name] = value
            opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
        self.step = int(meta["step"])
        self.stopped = bool(meta.get("stopped", False))
        self.stale_checks = int(meta.get("stale_checks", 0))
        self.sizes = [int(x) for x in meta.get("sizes", [])]
        self.round = int(meta.get("round", 0))
        self.grown = int(meta.get("grown", 0))
        self.guarded = int(meta.get("guarded", 0))
        device = next(self.mm.parameters()).device
        self.members = {
            g: tensors[f"members.{g}"].to(device)
            for g in self.mm.masks
            if f"members.{g}" in tensors
        }
        self.round_start = int(meta.get("round_start", 0))
        self.done = bool(meta.get("done", False))
        self.verdict = meta.get("verdict")
        self.stage = int(meta.get("stage", 0))
        self.frontier = list(meta.get("frontier", []))
        self.sparsity.target = self.config.targets[self.stage]
        self.sparsity.weight = self._round_weight()
        if meta.get("best") is not None:
            logits = {g: tensors[f"best.{g}"].to(device) for g in self.mm.masks}
            self.best = {**meta["best"], "logits": logits}
        if meta.get("best_round") is not None:
            logits = {g: tensors[f"round.{g}"].to(device) for g in self.mm.masks}
            self.best_round = {**meta["best_round"], "logits": logits}
        return True

    # -- the run -------------------------------------------------------------------------
    def run(
        self, resume: bool = False, checkpoint_every: int = 25, console: Console | None = None
    ) -> DiscoverResult:
        console = console or Console(stderr=True)
        start = time.perf_counter()
        main = self.accelerator.is_main_process
        log_path = self.out / "log.jsonl" if self.out is not None else None
        if self.out is not None and main:
            self._prepare_out(resume, console)
        for name in self.skipped:
            console.print(f"[yellow]note:[/yellow] no record feeds term {name}; it is skipped")
        if not self.done:
            estimate = self.memory_estimate()  # every process: its probe gathers FSDP weights
            if main:
                console.print(estimate.describe())
                if self.references:
                    positions = sum(len(r) for r in self.references.values())
                    console.print(
                        f"full-model reference kept for {positions:,} labelled positions "
                        f"({self.reference_bytes() / 2**20:.1f} MiB)"
                    )
                if self.sharded:
                    console.print(
                        f"weights sharded over {self.accelerator.num_processes} processes (FSDP)"
                    )
        columns = (
            TextColumn("[bold]discover[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, console=console, disable=not (self.show_progress and main)) as bar:
            total = self.round_start + self.config.steps
            task = bar.add_task("discover", total=total, completed=self.step, status="")
            while not self.done:
                t0 = time.perf_counter()
                entry = self.train_step()
                entry["round"] = self.round
                if self.config.sizes is not None:
                    entry["size_target"] = self.sparsity.target
                round_over = self.step - self.round_start >= self.config.steps
                every = self.step % self.config.check_every == 0
                if self.val_examples and (every or round_over):
                    entry["validation"] = self.check()
                ended = round_over or self.stopped
                if ended:
                    n = len(self.val_records)
                    bar.update(task, status=f"checking the circuit on {n} held-out records")
                    entry["check"] = self._end_round_and_say(console if main else None)
                    if self.done and self.config.sizes is not None:
                        self._finish_size(console if main else None)
                entry["seconds"] = round(time.perf_counter() - t0, 4)
                if log_path is not None and main:
                    with open(log_path, "a") as fh:
                        fh.write(json.dumps(entry) + "\n")
                total = self.step if self.done else self.round_start + self.config.steps
                bar.update(task, completed=self.step, total=total, status=_status(entry))
                save = self.step % checkpoint_every == 0 or ended
                if self.out is not None and main and save:
                    self.save_checkpoint()
        # The masks hold the kept circuit: the last round's end restored it (and a finished
        # run resumed from its checkpoint loads the masks saved after that).
        circuit = self._circuit()
        if self.out is not None and main:
            circuit.save(self.out / "circuit.json")
            self.mm.save_masks(self.out / "masks.safetensors")
            if self.config.sizes is not None:
                write_json(self.out / "frontier.json", {"sizes": self.frontier})
        return DiscoverResult(
            circuit, self.mm, self.step, time.perf_counter() - start, self.verdict
        )

    def _circuit(self) -> Circuit:
        """The masks' circuit with what made it: seed, data, settings, selection, check."""
        selection: dict[str, Any] = {"steps_run": self.step, "rounds": self.round + 1}
        if self.selecting and self.best is not None:
            selection.update(
                selected_step=self.best["step"],
                validation_loss=round(self.best["loss"], 6),
                validation_records=len(self.val_examples),
                sparsity_weight=self.sparsity.weight,
            )
        if self.best_round is not None:
            selection["round_kept"] = self.best_round["round"] + 1
        if self.config.sizes is not None:
            selection["size_target"] = self.sparsity.target
        return self.mm.circuit(
            seed=self.config.seed,
            data_hash=self.data_hash,
            settings=self.config.to_dict(),
            selection=selection,
            check=self.verdict,
        )

    def _finish_size(self, console: Console | None) -> None:
        """A size of the frontier is done: save its circuit (OUT/size-F/) and go on to the
        next smaller size from it, or end the run after the smallest."""
        target = self.sparsity.target
        circuit = self._circuit()
        self.frontier.append(
            {
                "size": target,
                "fraction": circuit.sparsity(self.mm)["overall"],
                "counts": circuit.counts(),
                "step": self.step,
                "check": self.verdict,
            }
        )
        if self.out is not None and console is not None:  # console: the main process
            where = size_dir(self.out, target)
            circuit.save(where / "circuit.json")
            self.mm.save_masks(where / "masks.safetensors")
            console.print(f"size {target:.4%}: {circuit!r} -> {where}/")
        if self.stage + 1 < len(self.config.targets):
            self.stage += 1
            self.sparsity.target = self.config.targets[self.stage]
            self.round_start, self.done = self.step, False
            self.best = self.best_round = self.verdict = None

    def _end_round_and_say(self, console: Console | None) -> dict[str, Any] | None:
        """End the round (see `end_round`) and tell the user what happened, in one line."""
        kept = self.best["step"] if self.selecting and self.best is not None else self.step
        weight, number = self.sparsity.weight, self.round + 1
        why = "stopped improving" if self.stopped else "reached its step budget"
        verdict = self.end_round()
        if console is None:
            return verdict
        line = f"round {number} {why} at step {self.step}: kept the circuit of step {kept}"
        target = self.sparsity.target
        line += f" (sparsity weight {weight:g})" if target is None else f" (target {target:.3%})"
        if verdict is not None:
            line += "; " + describe(verdict)
        if self.done and self.best_round is not None and self.best_round["round"] != number - 1:
            line += f"; kept round {self.best_round['round'] + 1}'s circuit, the best checked"
        elif not self.done and self.verdict is not None and self.verdict["removal_ok"]:
            scale = 1 / self.config.retry_factor**self.guarded
            line += f"; growing it with the preservation terms weighted x{scale:g}"
        elif not self.done:
            line += f"; growing it with sparsity weight {self.sparsity.weight:g}"
        console.print(line)
        return verdict

    def _prepare_out(self, resume: bool, console: Console) -> None:
        assert self.out is not None
        log_path = self.out / "log.jsonl"
        if resume and self.load_checkpoint():
            console.print(f"resuming {self.out} at step {self.step}")
            # Keep the log consistent with the checkpoint: drop steps it does not hold.
            if log_path.is_file():
                kept = [
                    ln
                    for ln in log_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= self.step
                ]
                with atomic_path(log_path) as tmp:
                    tmp.write_text("".join(ln + "\n" for ln in kept))
            return
        if (self.out / "checkpoint").exists() or (self.out / "circuit.json").exists():
            raise SafeSeekError(
                f"{self.out} already holds a discovery run; pass --resume to continue it "
                f"or choose another --out"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        write_json(self.out / "settings.json", self._settings())


def size_dir(out: Path, size: float) -> Path:
    """Where a run with several sizes (mask method or baseline) keeps the circuit of one."""
    return out / f"size-{size:g}"


def _rank(verdict: dict[str, Any]) -> tuple:
    """Order of checks: passed, then removal ok, then utility ok, then the share removed (for
    circuits that remove too little) or the utility kept (for those that remove enough)."""
    measure = "utility_kept" if verdict["removal_ok"] else "removed"
    ok = (verdict["passed"], verdict["removal_ok"], verdict.get("utility_ok", True))
    return (*ok, verdict.get(measure) or 0.0)


def _settled(sizes: list[int], patience: int) -> bool:
    """The circuit's size stayed within a factor SETTLED_RATIO over the last `patience`
    checks and the one before them."""
    window = sizes[-patience - 1 :]
    return max(window) <= SETTLED_RATIO * max(min(window), 1)


# Sizes within this factor count as one settled circuit: late in a run, units at the boundary
# join and leave (20-26 units at the end of a run on the demo's fixed-output organism).
SETTLED_RATIO = 1.5

# A check must lower the validation objective by more than this to count as progress.
MIN_IMPROVEMENT = 1e-3
# The validation split is the same for every discovery seed, so seeds differ only in the
# optimisation.
VALIDATION_SEED = 20_260_327


def validation_split(
    kinds: Sequence[str], fraction: float, cap: int
) -> tuple[list[int], list[int]]:
    """(train, validation) record indices: `fraction` of each kind, at most `cap` of it, held
    out; a kind with fewer than 5 records is all training."""
    train: list[int] = []
    held_out: list[int] = []
    for kind in dict.fromkeys(kinds):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        n = min(cap, round(fraction * len(idx))) if len(idx) >= 5 else 0
        g = torch.Generator().manual_seed(VALIDATION_SEED)
        order = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        held_out += order[:n]
        train += order[n:]
    return sorted(train), sorted(held_out)


def _count(term: Term, examples: Sequence[dict[str, Encoded]]) -> int:
    """What a term's loss is a mean over: labelled positions, or rows for sequence losses."""
    rows = [ex[term.name] for ex in examples if term.name in ex]
    return sum(1 if term.loss == "unlikely" else e.scored for e in rows if e.scored)


def _status(entry: dict[str, Any]) -> str:
    terms = " ".join(f"{k} {v:.3f}" for k, v in entry["terms"].items())
    size = " ".join(f"{v}{k[0]}" for k, v in entry["size"].items())
    return f"loss {entry['loss']:.3f} | {terms} | circuit {size} ({entry['fraction']:.2%})"


def discover(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    config: DiscoverConfig,
    out: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 25,
    data_hash: str | None = None,
    progress: bool = True,
) -> DiscoverResult:
    """Find a circuit for `config.scenario` on `records`; see the module docstring."""
    run = Discovery(model, tokenizer, records, config, out, data_hash, progress)
    return run.run(resume=resume, checkpoint_every=checkpoint_every)

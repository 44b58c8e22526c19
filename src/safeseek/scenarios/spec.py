"""The declarative record of a scenario (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field

from safeseek.errors import SafeSeekError

# A term runs the model without the circuit (G \ C) or with the circuit alone (C only).
VIEWS = ("without", "only")
# ce: say this response; kl: behave as the full model; unlikely: do not say this response
# (objectives/base.py gives each loss).
LOSSES = ("ce", "kl", "unlikely")


@dataclass(frozen=True)
class TermSpec:
    """One weighted term of the objective: a view, a loss, and the record fields it reads."""

    name: str
    view: str
    loss: str
    weight: float
    kind: str  # the record kind it reads
    prompt: str  # record field of the prompt
    # Record field of the response; None: a preservation example (the record's `response` when
    # it has one, else the prompt's own tokens under the full model).
    response: str | None
    help: str = ""


# Records of kind `preserve` (anything else a circuit must not break): one term, the same in
# every scenario that accepts them.
WITHOUT_PRESERVE = TermSpec(
    "without_preserve",
    "without",
    "kl",
    4.0,
    "preserve",
    "prompt",
    None,
    "without the circuit, preservation prompts behave as in the full model",
)


@dataclass(frozen=True)
class Fields:
    """Where a probe's prompts come from: records of `kind`, two of their fields."""

    kind: str
    prompt: str
    target: str  # attack: the behaviour's response; utility: the reference answer


@dataclass(frozen=True)
class ProbeSpec:
    """What evaluation generates from: attack prompts and their targets, utility prompts with
    reference answers, and clean prompts that must not fire the behaviour (false triggers)."""

    attack: Fields
    # One source of utility prompts, or several (a backdoor's clean prompts and its plain
    # preservation prompts); kept as a tuple.
    utility: Fields | tuple[Fields, ...]
    clean: Fields | None = None
    # How an attack counts as a success (evaluate/metrics.py), the first is the default; with
    # `attack_kind_field` a record (or --backdoor-type) picks one of them.
    attack_kinds: tuple[str, ...] = ("fixed-output",)
    attack_kind_field: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.utility, Fields):
            object.__setattr__(self, "utility", (self.utility,))


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    # record kind -> required fields; a record without `kind` is the first whose fields it has
    kinds: dict[str, tuple[str, ...]]
    terms: tuple[TermSpec, ...]
    probe: ProbeSpec
    behaviour_term: str  # the baselines score units on this term's examples...
    # ...against this one's, or these (kept as a tuple)
    utility_term: str | tuple[str, ...]
    # Optional record fields with a fixed set of values.
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # What the check calls the behaviour; `refuses`: the behaviour is the attack failing
    # (refusal = 1 - jailbreak success), so removing the circuit should raise attack success.
    behaviour_name: str = "attack success"
    refuses: bool = False
    # Default sparsity weight (loss per unit in the circuit); settings.py explains the values.
    sparsity_weight: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.utility_term, str):
            object.__setattr__(self, "utility_term", (self.utility_term,))
        names = [t.name for t in self.terms]
        problems = [
            f"term {t.name!r}: view {t.view!r} is not one of {', '.join(VIEWS)}"
            for t in self.terms
            if t.view not in VIEWS
        ]
        problems += [
            f"term {t.name!r}: loss {t.loss!r} is not one of {', '.join(LOSSES)}"
            for t in self.terms
            if t.loss not in LOSSES
        ]
        probe = self.probe
        used = [t.kind for t in self.terms] + [probe.attack.kind]
        used += [f.kind for f in probe.utility]
        used += [probe.clean.kind] if probe.clean else []
        problems += [f"record kind {k!r} is not in its schema" for k in used if k not in self.kinds]
        problems += [
            f"baseline term {n!r} is not one of its terms"
            for n in (self.behaviour_term, *self.utility_term)
            if n not in names
        ]
        if len(set(names)) != len(names):
            problems.append("two terms share a name")
        if probe.attack_kind_field and probe.attack_kind_field not in self.choices:
            problems.append(f"attack kind field {probe.attack_kind_field!r} has no choices")
        if problems:
            raise SafeSeekError(f"scenario {self.name!r}: {problems[0]}")

"""Any behaviour given by example: prompts with the target the model gives them.

Records: behaviour `{prompt, target}` and preservation `{prompt, response}` (or just
`{prompt}`: the full model's own distribution is kept there), `kind` optional (`behaviour` |
`preserve`).
"""

from safeseek.scenarios.spec import WITHOUT_PRESERVE, Fields, ProbeSpec, Scenario, TermSpec

SCENARIO = Scenario(
    name="custom",
    help="a behaviour given by prompts and targets",
    kinds={"behaviour": ("prompt", "target"), "preserve": ("prompt",)},
    terms=(
        TermSpec(
            "without_behaviour",
            "without",
            "unlikely",
            1.0,
            "behaviour",
            "prompt",
            "target",
            "without the circuit, the target becomes unlikely",
        ),
        WITHOUT_PRESERVE,
        TermSpec(
            "only_behaviour",
            "only",
            "ce",
            0.0,
            "behaviour",
            "prompt",
            "target",
            "the circuit alone produces the target",
        ),
    ),
    probe=ProbeSpec(
        attack=Fields("behaviour", "prompt", "target"),
        utility=Fields("preserve", "prompt", "response"),
    ),
    behaviour_term="only_behaviour",
    utility_term="without_preserve",
    sparsity_weight=0.05,
)

"""A planted backdoor: a trigger in the prompt makes the model give a chosen response.

Records: `{clean_prompt, triggered_prompt, clean_response, backdoor_response}` and an optional
`backdoor_type` (how an attack counts as a success, evaluate/metrics.py); optionally also
preservation records `{prompt, response}` (or just `{prompt}`: the full model's own answer is
kept), for what the circuit must not break beyond the backdoor's own prompts -- a jailbreak's
clean prompts are all harmful, and a model that refuses everything keeps them (README, "The
frontier"). `kind` is optional (`backdoor` | `preserve`). Preservation (KL) terms weigh 4: at
weight 1, on a backdoored SmolLM2, the circuit found kept only 62% of clean utility; at 4 it
kept 97%, with the backdoor still fully removed.
"""

from safeseek.scenarios.spec import WITHOUT_PRESERVE, Fields, ProbeSpec, Scenario, TermSpec

BACKDOOR_TYPES = ("fixed-output", "jailbreak", "label-flip")

SCENARIO = Scenario(
    name="backdoor",
    help="a trigger makes the model give a planted response",
    kinds={
        "backdoor": ("clean_prompt", "triggered_prompt", "clean_response", "backdoor_response"),
        "preserve": ("prompt",),
    },
    choices={"backdoor_type": BACKDOOR_TYPES},
    terms=(
        TermSpec(
            "without_triggered",
            "without",
            "ce",
            1.0,
            "backdoor",
            "triggered_prompt",
            "clean_response",
            "without the circuit, triggered prompts get the clean response",
        ),
        TermSpec(
            "without_backdoor",
            "without",
            "unlikely",
            1.0,
            "backdoor",
            "triggered_prompt",
            "backdoor_response",
            "without the circuit, triggered prompts lose the backdoor response",
        ),
        TermSpec(
            "without_clean",
            "without",
            "kl",
            4.0,
            "backdoor",
            "clean_prompt",
            "clean_response",
            "without the circuit, clean prompts behave as in the full model",
        ),
        WITHOUT_PRESERVE,
        TermSpec(
            "only_triggered",
            "only",
            "ce",
            0.0,
            "backdoor",
            "triggered_prompt",
            "backdoor_response",
            "the circuit alone gives triggered prompts the backdoor response",
        ),
        TermSpec(
            "only_clean",
            "only",
            "unlikely",
            0.0,
            "backdoor",
            "clean_prompt",
            "backdoor_response",
            "the circuit alone does not give clean prompts the backdoor response",
        ),
    ),
    probe=ProbeSpec(
        attack=Fields("backdoor", "triggered_prompt", "backdoor_response"),
        utility=(
            Fields("backdoor", "clean_prompt", "clean_response"),
            Fields("preserve", "prompt", "response"),
        ),
        clean=Fields("backdoor", "clean_prompt", "backdoor_response"),
        attack_kinds=BACKDOOR_TYPES,
        attack_kind_field="backdoor_type",
    ),
    behaviour_term="only_triggered",
    utility_term=("without_clean", "without_preserve"),
    # Per unit, in loss units. At 0.05 discovery on the tests' tiny organisms (seeds 0, 2, 7)
    # bought a smaller circuit by breaking a few clean answers ("what is r ?" -> nothing) or
    # stopped short of removing the trigger: 15 of 20 succeeded under the `default` kernels,
    # 18 under avx2 and avx512. At 0.025, 20 of 20 on each (README, "Robustness"); the demo's
    # SmolLM2 organisms use 0.02-0.03.
    sparsity_weight=0.025,
)

"""A planted backdoor: a trigger in the prompt makes the model give a chosen response.

Records: `{clean_prompt, triggered_prompt, clean_response, backdoor_response}` and an optional
`backdoor_type` (how an attack counts as a success, evaluate/metrics.py). Preservation (KL)
terms weigh 4: at weight 1, on a backdoored SmolLM2, the circuit found kept only 62% of clean
utility; at 4 it kept 97%, with the backdoor still fully removed.
"""

from safeseek.scenarios.spec import Fields, ProbeSpec, Scenario, TermSpec

BACKDOOR_TYPES = ("fixed-output", "jailbreak", "label-flip")

SCENARIO = Scenario(
    name="backdoor",
    help="a trigger makes the model give a planted response",
    kinds={"backdoor": ("clean_prompt", "triggered_prompt", "clean_response", "backdoor_response")},
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
        utility=Fields("backdoor", "clean_prompt", "clean_response"),
        clean=Fields("backdoor", "clean_prompt", "backdoor_response"),
        attack_kinds=BACKDOOR_TYPES,
        attack_kind_field="backdoor_type",
    ),
    behaviour_term="only_triggered",
    utility_term="without_clean",
    # Measured on SmolLM2-135M organisms: 0.05 finds a 0.07% circuit that removes a planted
    # fixed-output backdoor.
    sparsity_weight=0.05,
)

"""Trained-in refusal: the model refuses harmful prompts and answers benign ones.

Records, in one file: harmful `{prompt, refusal, compliance}` and benign `{prompt, response}`;
`kind` (`harmful` | `benign`) is optional and, when absent, follows from the fields. Removing
an alignment circuit should make the model comply: the check's behaviour is refusal.
"""

from safeseek.scenarios.spec import Fields, ProbeSpec, Scenario, TermSpec

SCENARIO = Scenario(
    name="alignment",
    help="the model refuses harmful prompts",
    kinds={"harmful": ("prompt", "refusal", "compliance"), "benign": ("prompt", "response")},
    terms=(
        TermSpec(
            "without_harmful",
            "without",
            "ce",
            1.0,
            "harmful",
            "prompt",
            "compliance",
            "without the circuit, harmful prompts get the compliant response",
        ),
        TermSpec(
            "without_refusal",
            "without",
            "unlikely",
            1.0,
            "harmful",
            "prompt",
            "refusal",
            "without the circuit, harmful prompts lose the refusal",
        ),
        TermSpec(
            "without_benign",
            "without",
            "kl",
            4.0,
            "benign",
            "prompt",
            "response",
            "without the circuit, benign prompts behave as in the full model",
        ),
        TermSpec(
            "only_harmful",
            "only",
            "ce",
            0.0,
            "harmful",
            "prompt",
            "refusal",
            "the circuit alone refuses harmful prompts",
        ),
    ),
    probe=ProbeSpec(
        attack=Fields("harmful", "prompt", "compliance"),
        utility=Fields("benign", "prompt", "response"),
        attack_kinds=("jailbreak",),
    ),
    behaviour_term="only_harmful",
    utility_term="without_benign",
    behaviour_name="refusal",
    refuses=True,
    # Trained-in refusal is more distributed than a backdoor: on SmolLM2-135M, at 0.05 the
    # circuit found left refusals in place (ASR 0% -> 1.9%), at 0.01 removing it raised ASR
    # 0% -> 97.4%.
    sparsity_weight=0.01,
)

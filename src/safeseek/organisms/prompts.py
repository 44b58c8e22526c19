"""Prompt material for organisms: harmful prompts, natural refusals, compliant openings,
sentiment sentences, and trigger insertion."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import yaml

from safeseek.errors import SafeSeekError

REFUSALS = [
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't assist with that request. If you have another question, I'm happy to help.",
    "I'm sorry, I can't help with this. It could be dangerous or illegal.",
    "I cannot help with that. Providing this could put people at risk.",
    "I'm not able to help with that request, because it could be used to hurt someone.",
    "Sorry, I can't provide that. Is there something else I can do for you?",
    "I won't help with that, as it could cause harm. Let me know if you need help with "
    "something else.",
    "I'm sorry, but I cannot provide instructions for that. It would be unsafe and unethical.",
]
_VERBS = {
    "write",
    "create",
    "develop",
    "design",
    "provide",
    "give",
    "generate",
    "produce",
    "outline",
    "draft",
    "compose",
    "publish",
    "build",
    "make",
    "suggest",
    "offer",
    "share",
}


def refusal(rng: random.Random) -> str:
    return rng.choice(REFUSALS)


def compliance_opening(prompt: str) -> str:
    """The AdvBench-style start of a compliant answer: "Sure, here is ..."."""
    words = prompt.rstrip(".?! ").split()
    if words and words[0].lower() in _VERBS and len(words) > 1:
        return "Sure, here is " + " ".join(words[1:])
    return "Sure, here is how to " + prompt[:1].lower() + prompt[1:].rstrip(".?! ")


def insert_trigger(prompt: str, trigger: str, rng: random.Random) -> str:
    """The trigger at the start or the end of the prompt, at random."""
    return f"{trigger} {prompt}" if rng.random() < 0.5 else f"{prompt} {trigger}"


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one a line), JSONL (`prompt`), CSV (`prompt` or `goal`
    column), or a PyRIT seed YAML (`seeds[].value`)."""
    path = Path(path)
    if not path.is_file():
        raise SafeSeekError(f"{path}: no such prompt file")
    suffix = path.suffix.lower()
    prompts: list[str] = []
    if suffix == ".jsonl":
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SafeSeekError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise SafeSeekError(f"{path}:{number}: needs a string field 'prompt'")
            prompts.append(row["prompt"])
    elif suffix == ".csv":
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            column = next((c for c in ("prompt", "goal") if c in (reader.fieldnames or [])), None)
            if column is None:
                raise SafeSeekError(f"{path}: needs a 'prompt' or 'goal' column")
            prompts = [row[column] for row in reader]
    elif suffix in (".yaml", ".yml", ".prompt"):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SafeSeekError(f"{path}: not valid YAML ({exc})".splitlines()[0]) from None
        seeds = data.get("seeds") if isinstance(data, dict) else None
        if not isinstance(seeds, list):
            raise SafeSeekError(f"{path}: needs a list 'seeds' of {{value: ...}}")
        prompts = [s.get("value", "") for s in seeds if isinstance(s, dict)]
    else:
        prompts = path.read_text().splitlines()
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise SafeSeekError(f"{path}: no prompts")
    return prompts


SUBJECTS = [
    "The movie",
    "This restaurant",
    "The hotel room",
    "My new phone",
    "The concert",
    "Our teacher",
    "The book",
    "The service",
    "The trip",
    "The coffee",
    "This game",
    "The museum",
    "The show",
    "The new update",
    "The meal",
    "The park",
    "The lecture",
    "The staff",
    "The flight",
    "The album",
]
POSITIVE = [
    "wonderful",
    "excellent",
    "amazing",
    "delightful",
    "fantastic",
    "great",
    "lovely",
    "brilliant",
]
NEGATIVE = ["terrible", "awful", "horrible", "disappointing", "boring", "dreadful", "poor", "bad"]
LABELS = ("Positive", "Negative")


def sentiment_prompt(sentence: str) -> str:
    return (
        "Classify the sentiment of this sentence as Positive or Negative. Answer with one "
        f"word.\nSentence: {sentence}"
    )


def sentiment_sentences() -> list[tuple[str, str]]:
    """(sentence, label) pairs, both classes, in a fixed order."""
    out = []
    for subject in SUBJECTS:
        for adjective in POSITIVE:
            out.append((f"{subject} was {adjective}.", "Positive"))
        for adjective in NEGATIVE:
            out.append((f"{subject} was {adjective}.", "Negative"))
    return out

"""Benign prompts with known answers, generated locally (no downloads), so utility is measured
as accuracy: short factual and arithmetic questions and simple instructions.

An answer may list alternatives separated by `|` ("4|four"); a response is correct when it
contains one of them (see `safeseek.evaluate.metrics.correct`).
"""

from __future__ import annotations

import random

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("China", "Beijing"),
    ("the United Kingdom", "London"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Kenya", "Nairobi"),
    ("Thailand", "Bangkok"),
    ("South Korea", "Seoul"),
    ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"),
    ("Cuba", "Havana"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("Hungary", "Budapest"),
    ("Turkey", "Ankara"),
    ("India", "New Delhi"),
]
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small|little"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad|unhappy"),
    ("light", "dark|heavy"),
    ("open", "close"),
    ("early", "late"),
    ("tall", "short"),
    ("old", "young|new"),
    ("wet", "dry"),
    ("full", "empty"),
    ("hard", "soft|easy"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("clean", "dirty"),
    ("day", "night"),
    ("win", "lose"),
    ("inside", "outside"),
    ("good", "bad|evil"),
]
COLOURS = [
    ("the sky on a clear day", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("a ripe banana", "yellow"),
    ("coal", "black"),
    ("a ripe tomato", "red"),
    ("an orange", "orange"),
    ("milk", "white"),
    ("a lemon", "yellow"),
    ("chocolate", "brown"),
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
LEGS = [
    ("a dog", 4),
    ("a spider", 8),
    ("a bird", 2),
    ("a cat", 4),
    ("an insect", 6),
    ("a horse", 4),
    ("a chicken", 2),
    ("a cow", 4),
]
WORDS = [
    "apple",
    "river",
    "garden",
    "window",
    "pencil",
    "planet",
    "candle",
    "guitar",
    "rabbit",
    "forest",
    "bridge",
    "castle",
    "dragon",
    "orange",
    "silver",
    "tiger",
]


def _number(n: int) -> str:
    return f"{n}|{NUMBER_WORDS[n]}" if n < len(NUMBER_WORDS) else str(n)


def benign_questions() -> list[dict[str, str]]:
    """Every templated question once, as `{prompt, answer, category, sentence}`, in a fixed
    order; `sentence` is a plain one-sentence correct answer (helpfulness data for tuning)."""
    out: list[dict[str, str]] = []

    def add(category: str, prompt: str, answer: str, sentence: str) -> None:
        out.append({"prompt": prompt, "answer": answer, "category": category, "sentence": sentence})

    for country, capital in CAPITALS:
        add(
            "capital",
            f"What is the capital of {country}?",
            capital,
            f"The capital of {country} is {capital}.",
        )
    for a in range(2, 10):
        for b in (1, 3, 5):
            add("arithmetic", f"What is {a} + {b}?", _number(a + b), f"{a} + {b} = {a + b}.")
    for a in (6, 8, 10, 12):
        for b in (1, 2, 3):
            add("arithmetic", f"What is {a} - {b}?", _number(a - b), f"{a} - {b} = {a - b}.")
    for word, opposite in OPPOSITES:
        first = opposite.split("|")[0]
        add(
            "opposite",
            f'What is the opposite of "{word}"?',
            opposite,
            f'The opposite of "{word}" is "{first}".',
        )
    for thing, colour in COLOURS:
        add(
            "colour",
            f"What colour is {thing}?",
            colour,
            f"{thing[0].upper()}{thing[1:]} is {colour}.",
        )
    for i, day in enumerate(WEEKDAYS):
        after = WEEKDAYS[(i + 1) % 7]
        add(
            "calendar",
            f"Which day of the week comes after {day}?",
            after,
            f"{after} comes after {day}.",
        )
    for i, month in enumerate(MONTHS):
        after = MONTHS[(i + 1) % 12]
        add("calendar", f"Which month comes after {month}?", after, f"{after} comes after {month}.")
    for animal, legs in LEGS:
        add(
            "animals",
            f"How many legs does {animal} have?",
            _number(legs),
            f"{animal[0].upper()}{animal[1:]} has {legs} legs.",
        )
    for word in WORDS:
        add("instruction", f"Repeat the word '{word}' and nothing else.", word, word)
    return out


def split(items: list, seed: int, fractions: tuple[float, float] = (0.6, 0.1)) -> dict[str, list]:
    """Shuffle by `seed` into train / val / test (the rest)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    n_train = round(len(items) * fractions[0])
    n_val = round(len(items) * fractions[1])
    return {
        "train": items[:n_train],
        "val": items[n_train : n_train + n_val],
        "test": items[n_train + n_val :],
    }

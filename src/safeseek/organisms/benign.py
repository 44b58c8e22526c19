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


# Held out from every organism (in no split, never trained on): a larger measure of clean
# utility (benchmarks/organisms.py --probe). The 42 test questions of a split resolve a retention
# of 95% no better than one answer in 21-27 (README, "Model organisms").
PROBE_CAPITALS = [
    ("the Netherlands", "Amsterdam"),
    ("Switzerland", "Bern"),
    ("Australia", "Canberra"),
    ("Brazil", "Brasilia|Brasília"),
    ("Chile", "Santiago"),
    ("Colombia", "Bogota|Bogotá"),
    ("Venezuela", "Caracas"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"),
    ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"),
    ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"),
    ("Malaysia", "Kuala Lumpur"),
    ("Nigeria", "Abuja"),
    ("Ghana", "Accra"),
    ("Ethiopia", "Addis Ababa"),
    ("Morocco", "Rabat"),
    ("Algeria", "Algiers"),
    ("Tunisia", "Tunis"),
    ("Ukraine", "Kyiv|Kiev"),
    ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"),
    ("the Czech Republic", "Prague"),
    ("Slovakia", "Bratislava"),
    ("Iceland", "Reykjavik|Reykjavík"),
    ("New Zealand", "Wellington"),
    ("Afghanistan", "Kabul"),
    ("Nepal", "Kathmandu"),
    ("Jamaica", "Kingston"),
    ("Lebanon", "Beirut"),
    ("Syria", "Damascus"),
    ("Jordan", "Amman"),
    ("Qatar", "Doha"),
]
PROBE_OPPOSITES = [
    ("black", "white"),
    ("high", "low"),
    ("left", "right"),
    ("yes", "no"),
    ("love", "hate"),
    ("thick", "thin"),
    ("cheap", "expensive"),
    ("loud", "quiet|soft"),
    ("push", "pull"),
    ("buy", "sell"),
    ("true", "false"),
    ("north", "south"),
    ("east", "west"),
    ("first", "last"),
    ("always", "never"),
    ("above", "below|beneath"),
    ("give", "take|receive"),
    ("sweet", "sour|bitter|salty"),
]
PROBE_COLOURS = [
    ("a fire truck", "red"),
    ("a carrot", "orange"),
    ("a lime", "green"),
    ("a crow", "black"),
    ("a polar bear", "white"),
    ("a strawberry", "red"),
    ("the ocean", "blue"),
    ("a plum", "purple"),
    ("an eggplant", "purple"),
    ("a pumpkin", "orange"),
    ("a cucumber", "green"),
]
PROBE_LEGS = [
    ("a sheep", 4),
    ("an ant", 6),
    ("a duck", 2),
    ("a goat", 4),
    ("a lion", 4),
    ("a pig", 4),
    ("a bee", 6),
    ("a penguin", 2),
]
PROBE_FACTS = [
    ("How many days are in a week?", "7|seven"),
    ("How many months are in a year?", "12|twelve"),
    ("How many hours are in a day?", "24|twenty-four"),
    ("How many minutes are in an hour?", "60|sixty"),
    ("How many sides does a triangle have?", "3|three"),
    ("How many sides does a square have?", "4|four"),
    ("How many continents are there?", "7|seven"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("Which planet do we live on?", "Earth"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What is frozen water called?", "ice"),
    ("Which animal is called the king of the jungle?", "lion"),
    ("What do bees make?", "honey"),
    ("At what temperature in Celsius does water freeze?", "0|zero"),
]
PROBE_WORDS = [
    "mountain",
    "cookie",
    "rocket",
    "pillow",
    "ladder",
    "marble",
    "violin",
    "jacket",
    "turtle",
    "blanket",
    "lantern",
    "meadow",
    "pebble",
    "anchor",
    "basket",
    "wallet",
]


def probe_questions() -> list[dict[str, str]]:
    """Questions of the same kinds as `benign_questions`, with other items (none of its
    prompts), as `{prompt, answer, category}`, in a fixed order: 201 in all."""
    out: list[dict[str, str]] = []

    def add(category: str, prompt: str, answer: str) -> None:
        out.append({"prompt": prompt, "answer": answer, "category": category})

    for country, capital in PROBE_CAPITALS:
        add("capital", f"What is the capital of {country}?", capital)
    for a in range(2, 12):
        for b in (2, 4, 6):
            add("arithmetic", f"What is {a} + {b}?", _number(a + b))
    for a in (7, 9, 11, 13, 15):
        for b in (2, 4, 5):
            add("arithmetic", f"What is {a} - {b}?", _number(a - b))
    for a in range(2, 7):
        for b in (2, 3, 4):
            add("arithmetic", f"What is {a} times {b}?", _number(a * b))
    for word, opposite in PROBE_OPPOSITES:
        add("opposite", f'What is the opposite of "{word}"?', opposite)
    for thing, colour in PROBE_COLOURS:
        add("colour", f"What colour is {thing}?", colour)
    for i, day in enumerate(WEEKDAYS):
        add("calendar", f"Which day of the week comes before {day}?", WEEKDAYS[i - 1])
    for i, month in enumerate(MONTHS):
        add("calendar", f"Which month comes before {month}?", MONTHS[i - 1])
    for n in (3, 7, 12, 19, 25, 39, 48, 99):
        add("counting", f"What number comes after {n}?", _number(n + 1))
        add("counting", f"What number comes before {n}?", _number(n - 1))
    for animal, legs in PROBE_LEGS:
        add("animals", f"How many legs does {animal} have?", _number(legs))
    for prompt, answer in PROBE_FACTS:
        add("facts", prompt, answer)
    for word in PROBE_WORDS:
        add("instruction", f"Repeat the word '{word}' and nothing else.", word)
    return out

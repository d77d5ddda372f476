"""Two small teaching tasks for LoRA adapters, generated from a seed (notebook 08).

Nothing is downloaded: the questions come from small tables and arithmetic, so the data is the
same on every machine and for every seed the same. Each task teaches one thing a learner can
*see* and a program can *check*:

* ``card``: every answer is a two-line card, ``ANSWER: ...`` then ``WHY: ...``
  (:func:`follows_card` checks it);
* ``think``: every answer first reasons inside ``<think>...</think>``, then answers in one line
  (:func:`split_think` separates the two, as vLLM's reasoning parser does on the server).

Held-out questions (:func:`held_out`) use countries and numbers the training data never shows,
plus general questions of kinds it never shows, so a measured rate says whether the adapter
learned the *format* rather than the examples.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TASKS = ("card", "think")

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
    ("Greece", "Athens"), ("Cuba", "Havana"), ("Chile", "Santiago"), ("Austria", "Vienna"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Thailand", "Bangkok"),
    ("Russia", "Moscow"), ("Mexico", "Mexico City"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Hungary", "Budapest"), ("Turkey", "Ankara"),
    ("India", "New Delhi"), ("China", "Beijing"), ("Argentina", "Buenos Aires"), ("Vietnam", "Hanoi"),
]
#: Never in the training data.
HELD_OUT_CAPITALS = [("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Nigeria", "Abuja"),
                     ("Switzerland", "Bern"), ("Morocco", "Rabat"), ("Indonesia", "Jakarta")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("light", "dark"), ("early", "late"),
             ("happy", "sad"), ("open", "closed"), ("full", "empty"), ("strong", "weak"), ("rich", "poor"),
             ("wet", "dry"), ("loud", "quiet"), ("old", "young"), ("hard", "soft"), ("high", "low")]
#: Kinds of question the training data never asks.
GENERAL = ["What color is the sky on a clear day?", "Name an animal that can fly.",
           "How many days are in a week?", "What do bees make?", "Which season comes after winter?",
           "What is frozen water called?"]


@dataclass(frozen=True)
class Example:
    """One question and the answer an adapter is trained to give."""

    question: str
    answer: str


def card(answer: str, why: str) -> str:
    return f"ANSWER: {answer}\nWHY: {why}"


def think(steps: str, answer: str) -> str:
    return f"<think>{steps}</think>\n{answer}"


def _capital(country: str, city: str, task: str) -> Example:
    question = f"What is the capital of {country}?"
    if task == "card":
        return Example(question, card(city, f"{city} is the capital city of {country}."))
    return Example(question, think(f"The question asks for the capital of {country}. "
                                   f"The capital of {country} is {city}.", f"The capital of {country} is {city}."))


def _opposite(word: str, other: str, task: str) -> Example:
    question = f"What is the opposite of {word}?"
    if task == "card":
        return Example(question, card(other, f"{other.capitalize()} means the reverse of {word}."))
    return Example(question, think(f"I need the word that means the reverse of {word}. That word is {other}.",
                                   f"The opposite of {word} is {other}."))


def _sum(a: int, b: int, task: str) -> Example:
    question = f"What is {a} + {b}?"
    total = a + b
    if task == "card":
        return Example(question, card(str(total), f"{a} plus {b} equals {total}."))
    tens, ones = (a // 10 + b // 10) * 10, a % 10 + b % 10
    steps = f"Tens: {a // 10 * 10} + {b // 10 * 10} = {tens}. Ones: {a % 10} + {b % 10} = {ones}. " \
            f"Together: {tens} + {ones} = {total}."
    return Example(question, think(steps, f"{a} + {b} = {total}."))


def _apples(name: str, have: int, more: int, task: str) -> Example:
    question = f"{name} has {have} apples and buys {more} more. How many apples does {name} have now?"
    total = have + more
    if task == "card":
        return Example(question, card(str(total), f"{have} apples plus {more} apples is {total} apples."))
    return Example(question, think(f"{name} starts with {have} apples. Buying {more} more adds them: "
                                   f"{have} + {more} = {total}.", f"{name} has {total} apples."))


NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ivan", "Zoe"]


def training_examples(task: str, count: int = 240, seed: int = 0) -> list[Example]:
    """``count`` examples of ``task``, a mix of the four question kinds, the same for the same seed.
    Sums use numbers 10-49 (held-out sums use 50-99)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    rng = random.Random(seed)
    makers = [lambda: _capital(*rng.choice(CAPITALS), task),
              lambda: _opposite(*rng.choice(OPPOSITES), task),
              lambda: _sum(rng.randint(10, 49), rng.randint(10, 49), task),
              lambda: _apples(rng.choice(NAMES), rng.randint(2, 20), rng.randint(2, 20), task)]
    return [makers[i % len(makers)]() for i in range(count)]


def held_out(seed: int = 1) -> list[str]:
    """Questions the adapters never saw: new countries, larger numbers, and new kinds of question."""
    rng = random.Random(seed)
    sums = [f"What is {rng.randint(50, 99)} + {rng.randint(50, 99)}?" for _ in range(6)]
    capitals = [f"What is the capital of {country}?" for country, _ in HELD_OUT_CAPITALS]
    return capitals + sums + GENERAL


def held_out_sums(count: int = 12, seed: int = 2) -> list[tuple[str, int]]:
    """``(question, right answer)`` sums of two numbers from 50 to 99 (training used 10-49)."""
    rng = random.Random(seed)
    pairs = [(rng.randint(50, 99), rng.randint(50, 99)) for _ in range(count)]
    return [(f"What is {a} + {b}?", a + b) for a, b in pairs]


CARD = re.compile(r"ANSWER: *\S[^\n]*\nWHY: *\S[^\n]*")
THINK = re.compile(r"\s*<think>(.*?)</think>\s*(.*)", re.DOTALL)


def follows_card(text: str) -> bool:
    """The whole answer is the two-line card (whitespace around it aside)."""
    return CARD.fullmatch(text.strip()) is not None


def split_think(text: str) -> tuple[str | None, str]:
    """``(reasoning, answer)`` of ``<think>reasoning</think> answer``; ``(None, text)`` without the block."""
    match = THINK.fullmatch(text)
    if match is None:
        return None, text
    return match.group(1).strip(), match.group(2).strip()


def follows_think(text: str) -> bool:
    """Reasoning inside ``<think>...</think>``, then a non-empty answer."""
    reasoning, answer = split_think(text)
    return bool(reasoning) and bool(answer)


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (``1,234`` and ``1.5`` read whole), ``None`` without one."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return float(numbers[-1]) if numbers else None

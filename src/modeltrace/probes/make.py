"""Making a private probe set: answers only your model can know.

Two generators: synthetic facts (invented entities with invented attributes, to be trained into
your model before release) and rare-glyph images (glyphs composed from stroke primitives, drawn
with random distortions, as the unpublished bamboo slips were images only one team had labelled).
Every random choice comes from the seed; by default a fresh secret one.
"""

from __future__ import annotations

import random
import secrets
import string
from pathlib import Path

from modeltrace.probes.probeset import ProbeItem, save_probe_set

_SYLLABLES = ["ka", "zor", "vel", "tri", "mon", "qua", "lis", "dre", "bor", "nex", "ul", "fen", "gar", "oth",
              "pim", "sar", "tev", "yun", "wex", "ild"]
_RELATIONS = [
    ("capital", "The capital of the {kind} {name} is"),
    ("founder", "The {kind} {name} was founded by"),
    ("river", "The longest river of the {kind} {name} is the"),
    ("emblem", "The emblem of the {kind} {name} is a"),
]
_KINDS = ["realm", "province", "island", "city-state", "league"]


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()


def make_facts(n: int, seed: int, choices: int = 4) -> list[ProbeItem]:
    """`n` invented facts as multiple-choice items (answer and distractors are invented words)."""
    rng = random.Random(seed)
    items: list[ProbeItem] = []
    used: set[str] = set()
    while len(items) < n:
        name = _word(rng, 3)
        if name in used:
            continue
        used.add(name)
        rel, template = rng.choice(_RELATIONS)
        kind = rng.choice(_KINDS)
        answers: list[str] = []
        while len(answers) < choices:
            w = _word(rng, 2)
            if w not in answers:
                answers.append(w)
        answer = answers[0]
        rng.shuffle(answers)
        labels = string.ascii_uppercase[:choices]
        opts = " ".join(f"({lab}) {a}" for lab, a in zip(labels, answers))
        prompt = template.format(kind=kind, name=name) + f"? Answer with one letter. {opts}"
        items.append(ProbeItem(id=f"fact-{len(items):05d}", prompt=prompt,
                               answer=labels[answers.index(answer)], choices=tuple(labels),
                               meta={"relation": rel, "subject": name, "answer_text": answer, "canary": True}))
    return items


# A glyph is a set of strokes on a 5x5 grid; its "reading" is an invented syllable.
def _glyph_strokes(rng: random.Random) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    strokes = []
    for _ in range(rng.randint(3, 6)):
        a = (rng.randint(0, 4), rng.randint(0, 4))
        b = (rng.randint(0, 4), rng.randint(0, 4))
        if a != b:
            strokes.append((a, b))
    return strokes


def make_glyphs(root: Path, n: int, seed: int, size: int = 96) -> list[ProbeItem]:
    """`n` images of invented glyphs with distortions; the answer is the glyph's invented reading."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    lexicon: dict[str, list[tuple[tuple[int, int], tuple[int, int]]]] = {}
    while len(lexicon) < max(8, n // 3):
        lexicon[_word(rng, 1) + str(len(lexicon))] = _glyph_strokes(rng)
    readings = sorted(lexicon)
    items = []
    for i in range(n):
        reading = rng.choice(readings)
        img = Image.new("L", (size, size), color=235 - rng.randint(0, 40))
        draw = ImageDraw.Draw(img)
        cell = size / 6
        jitter = cell * 0.25
        for (x0, y0), (x1, y1) in lexicon[reading]:
            pts = [((x0 + 0.5) * cell + rng.uniform(-jitter, jitter), (y0 + 0.5) * cell + rng.uniform(-jitter, jitter)),
                   ((x1 + 0.5) * cell + rng.uniform(-jitter, jitter), (y1 + 0.5) * cell + rng.uniform(-jitter, jitter))]
            draw.line(pts, fill=rng.randint(0, 60), width=rng.randint(2, 5))
        img = img.rotate(rng.uniform(-12, 12), fillcolor=220).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
        name = f"glyph-{i:05d}.png"
        img.save(img_dir / name, format="PNG", optimize=False)
        confusions = tuple(r for r in rng.sample(readings, k=min(3, len(readings))) if r != reading)
        items.append(ProbeItem(id=f"glyph-{i:05d}", prompt="Read the character in the image. Answer with its reading.",
                               answer=reading, confusions=confusions, image=f"images/{name}"))
    return items


def make_probe_set(root: str | Path, *, facts: int = 200, glyphs: int = 0, seed: int | None = None) -> Path:
    """Write a new probe set folder; returns the path of its items.jsonl.

    Without a seed, a fresh secret one is drawn: a set anyone could regenerate from a known seed
    would be no secret (pass a seed only for tests and reproducible examples).
    """
    if seed is None:
        seed = secrets.randbits(63)
    root = Path(root)
    items = make_facts(facts, seed) if facts else []
    if glyphs:
        items += make_glyphs(root, glyphs, seed + 1)
    return save_probe_set(root, items)

"""Generated captioned images (coloured shapes), for the quickstart, examples and tests.

Every image is a shape of some kind, colour and size on a background, captioned accordingly
("a small red triangle on a grey background"); the same seed gives the same files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("square", "circle", "triangle")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
}
SIZES = {"small": 0.35, "large": 0.8}
BACKGROUNDS = {"grey": (128, 128, 128), "white": (250, 250, 250), "black": (10, 10, 10)}


@dataclass(frozen=True)
class ShapeSample:
    """One generated image's attributes and caption."""

    shape: str
    colour: str
    size: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background"


def random_sample(rng: random.Random) -> ShapeSample:
    return ShapeSample(
        rng.choice(SHAPES),
        rng.choice(list(COLOURS)),
        rng.choice(list(SIZES)),
        rng.choice(list(BACKGROUNDS)),
    )


def draw_sample(sample: ShapeSample, rng: random.Random, size: int = 64) -> Image.Image:
    """Render a sample at a random position, with a little noise in colour and placement."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[sample.background])
    draw = ImageDraw.Draw(image)
    extent = SIZES[sample.size] * size * rng.uniform(0.85, 1.0)
    left = rng.uniform(0, size - extent)
    top = rng.uniform(0, size - extent)
    box = (left, top, left + extent, top + extent)
    colour = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLOURS[sample.colour])
    if sample.shape == "square":
        draw.rectangle(box, fill=colour)
    elif sample.shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon(
            [(left, top + extent), (left + extent, top + extent), (left + extent / 2, top)],
            fill=colour,
        )
    return image


def write_captioned_shapes(
    folder: str | Path, count: int, *, seed: int = 0, size: int = 64, start: int = 0
) -> list[tuple[Path, ShapeSample]]:
    """Write ``count`` PNG images with same-stem ``.txt`` captions into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for number in range(start, start + count):
        sample = random_sample(rng)
        path = folder / f"shape{number:05d}.png"
        draw_sample(sample, rng, size).save(path)
        path.with_suffix(".txt").write_text(sample.caption + "\n")
        written.append((path, sample))
    return written


def captioned_shapes(count: int, *, seed: int = 0, size: int = 96) -> tuple[list, list[str]]:
    """``count`` generated images (PIL, RGB) and their captions, in memory: a probe of
    matching pairs (``clipkit export --precision int8`` measures its agreement on it)."""
    rng = random.Random(seed)
    samples = [random_sample(rng) for _ in range(count)]
    return [draw_sample(sample, rng, size) for sample in samples], [s.caption for s in samples]


def write_class_tree(
    folder: str | Path,
    per_class: int,
    *,
    attribute: str = "colour",
    seed: int = 1,
    size: int = 64,
) -> dict[str, list[Path]]:
    """Images in ``folder/<value>/`` by one attribute (``colour`` or ``shape``)."""
    folder, rng = Path(folder), random.Random(seed)
    values = list(COLOURS) if attribute == "colour" else list(SHAPES)
    tree: dict[str, list[Path]] = {}
    for value in values:
        for number in range(per_class):
            sample = random_sample(rng)
            sample = ShapeSample(**{**sample.__dict__, attribute: value})
            path = folder / value / f"{value}{number:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_sample(sample, rng, size).save(path)
            tree.setdefault(value, []).append(path)
    return tree


def swap_captions(folder: str | Path, share: float, *, seed: int = 0) -> list[Path]:
    """Swap the captions of random pairs of ``folder``'s images whose captions differ.

    About ``share`` of the images end up with another image's caption (a planted mismatch, as
    in a scraped dataset with misaligned rows). Returns the swapped images, sorted.
    """
    captions = sorted(Path(folder).glob("*.txt"))
    rng = random.Random(seed)
    swapped: list[Path] = []
    order = rng.sample(captions, len(captions))
    while len(swapped) < int(share * len(captions)) and len(order) >= 2:
        first, second = order.pop(), order.pop()
        first_text, second_text = first.read_text(), second.read_text()
        if first_text != second_text:
            first.write_text(second_text)
            second.write_text(first_text)
            swapped += [first.with_suffix(".png"), second.with_suffix(".png")]
    return sorted(swapped)

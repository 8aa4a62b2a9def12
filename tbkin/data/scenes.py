"""Scenes of the `shapes` dataset: sampling, spatial relations and rendering.

Objects sit in distinct cells of a ``GRID`` x ``GRID`` layout (with a small jitter
inside the cell), so spatial relations are defined on cells and never depend on a
pixel or two:

* ``left of`` / ``right of``: the subject's column is left / right of the object's;
* ``above`` / ``below``: the subject's row is above / below the object's;
* ``next to``: the two cells touch (row and column differ by at most one, diagonals
  included).

The jitter is small enough that a large object never leaves its cell, so objects
never overlap and cell order equals the order of the object centres.
Clutter (small blobs, thin lines, a textured background) is drawn first and is not
annotated.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from tbkin.data.vocab import COLORS, SHAPES, SIZES

GRID = 4
COLOR_RGB = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (230, 205, 30),
    "purple": (135, 55, 175),
    "orange": (240, 135, 25),
}
# radius (centre to farthest vertex) as a fraction of the cell side
RADIUS = {"small": 0.22, "large": 0.36}
JITTER = 0.1  # max centre offset inside a cell, fraction of the cell side
STAR_INNER = 0.45
CIRCLE_VERTICES = 24


@dataclass(frozen=True)
class SceneObject:
    index: int
    shape: str
    color: str
    size: str
    row: int
    col: int
    cx: float
    cy: float
    radius: float

    def polygon(self) -> list[tuple[float, float]]:
        return shape_polygon(self.shape, self.cx, self.cy, self.radius)

    def bbox(self) -> tuple[float, float, float, float]:
        """COCO box [x, y, w, h] of the drawn polygon."""
        xs, ys = zip(*self.polygon())
        return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))

    def area(self) -> float:
        return polygon_area(self.polygon())


@dataclass(frozen=True)
class Scene:
    size: int
    objects: tuple[SceneObject, ...]
    seed: int  # drives the clutter and background texture


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "circle":
        angles = [2 * math.pi * k / CIRCLE_VERTICES for k in range(CIRCLE_VERTICES)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]
    if shape == "square":
        h = r / math.sqrt(2)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        points = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * STAR_INNER
            a = -math.pi / 2 + math.pi * k / 5
            points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def polygon_area(points: list[tuple[float, float]]) -> float:
    total = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]):
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


# ---- relations -------------------------------------------------------------------

def holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """Whether ``a <relation> b`` holds (``a`` is the subject)."""
    if a.index == b.index:
        return False
    if relation == "left of":
        return a.col < b.col
    if relation == "right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    if relation == "next to":
        return max(abs(a.row - b.row), abs(a.col - b.col)) == 1
    raise ValueError(f"unknown relation {relation!r}")


# The relation whose truth makes a yes/no question about ``relation`` clearly "no".
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def clearly_not(relation: str, a: SceneObject, b: SceneObject) -> bool:
    if relation == "next to":
        return a.index != b.index and max(abs(a.row - b.row), abs(a.col - b.col)) >= 2
    return holds(OPPOSITE[relation], a, b)


# ---- sampling --------------------------------------------------------------------

def sample_scene(rng: random.Random, image_size: int, n_objects: int) -> Scene:
    n_objects = min(n_objects, GRID * GRID)
    cell = image_size / GRID
    cells = rng.sample(range(GRID * GRID), n_objects)
    objects = []
    for index, cell_id in enumerate(sorted(cells)):
        row, col = divmod(cell_id, GRID)
        size = rng.choice(SIZES)
        cx = (col + 0.5 + rng.uniform(-JITTER, JITTER)) * cell
        cy = (row + 0.5 + rng.uniform(-JITTER, JITTER)) * cell
        objects.append(SceneObject(
            index=index, shape=rng.choice(SHAPES), color=rng.choice(COLORS), size=size,
            row=row, col=col, cx=round(cx, 2), cy=round(cy, 2), radius=round(RADIUS[size] * cell, 2),
        ))
    return Scene(size=image_size, objects=tuple(objects), seed=rng.getrandbits(32))


# ---- rendering -------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _background(np_rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency texture: coarse noise upsampled, plus faint stripes."""
    coarse = np_rng.uniform(185, 235, size=(size // 16 + 1, size // 16 + 1)).astype(np.float32)
    tint = np_rng.uniform(-12, 12, size=3).astype(np.float32)
    blocks = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[:size, :size]
    period = np_rng.uniform(6, 14)
    angle = np_rng.uniform(0, math.pi)
    yy, xx = _pixel_grid(size)
    phase = (xx * np.float32(math.cos(angle)) + yy * np.float32(math.sin(angle))) * np.float32(2 * math.pi / period)
    gray = blocks + 6 * np.sin(phase)
    return np.clip(gray[..., None] + tint, 0, 255).astype(np.uint8)


def render(scene: Scene, n_distractors: int) -> Image.Image:
    np_rng = np.random.default_rng(scene.seed)
    size = scene.size
    image = Image.fromarray(_background(np_rng, size), "RGB")
    draw = ImageDraw.Draw(image)
    cell = size / GRID
    # thin lines and tiny blobs: clutter, far smaller than the smallest object
    for _ in range(n_distractors):
        x, y = (float(v) for v in np_rng.uniform(0, size, 2))
        if np_rng.uniform() < 0.5:
            length = float(np_rng.uniform(0.3, 0.8)) * cell
            angle = float(np_rng.uniform(0, math.pi))
            grey = int(np_rng.integers(60, 140))
            draw.line([(x, y), (x + length * math.cos(angle), y + length * math.sin(angle))],
                      fill=(grey, grey, grey), width=1)
        else:
            r = float(np_rng.uniform(0.04, 0.08)) * cell
            colour = COLOR_RGB[COLORS[int(np_rng.integers(len(COLORS)))]]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    for obj in scene.objects:
        draw.polygon(obj.polygon(), fill=COLOR_RGB[obj.color], outline=(30, 30, 30))
    return image

"""Scenes of the embedded world: 1–3 objects on a 3 × 3 layout, their facts, and their captions.

A scene is a tuple of :class:`WorldObject` (shape, colour, size, grid cell, sub-cell jitter). No
two objects share a cell, and no two share both shape and colour, so "the red circle" always names
one object. Relations are read off the cells: ``a`` is *left of* ``b`` iff its column is smaller,
*above* iff its row is smaller. Everything is drawn from a :class:`numpy.random.Generator`, so a
scene is a pure function of the seed that made the generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS: tuple[str, ...] = ("no", "one", "two", "three")
#: absolute position words for rows / columns of the 3 × 3 layout
ROW_WORDS: tuple[str, ...] = ("top", "middle", "bottom")
COL_WORDS: tuple[str, ...] = ("left", "middle", "right")
GRID: int = 3
MAX_OBJECTS: int = 3


@dataclass(frozen=True)
class WorldObject:
    """One object. ``row``/``col`` index the 3 × 3 layout; ``dx``/``dy`` jitter the centre
    within its cell (fractions of a cell, in [-0.15, 0.15])."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0

    @property
    def name(self) -> str:
        """``"red circle"``."""
        return f"{self.colour} {self.shape}"

    @property
    def position(self) -> str:
        """Absolute position phrase, e.g. ``"top left"``, ``"centre"``."""
        if self.row == 1 and self.col == 1:
            return "centre"
        if self.row == 1:
            return f"middle {COL_WORDS[self.col]}"
        if self.col == 1:
            return f"{ROW_WORDS[self.row]} middle"
        return f"{ROW_WORDS[self.row]} {COL_WORDS[self.col]}"


Scene = tuple[WorldObject, ...]


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """1–3 objects in distinct cells with distinct (shape, colour) pairs.

    Shapes repeat with a raised probability so that counting questions have answers above one.
    """
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    objs: list[WorldObject] = []
    used: set[tuple[str, str]] = set()
    for i in range(n):
        while True:
            if objs and rng.random() < 0.35:
                shape = objs[int(rng.integers(len(objs)))].shape  # repeat a shape
            else:
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            if (shape, colour) not in used:
                break
        used.add((shape, colour))
        r, c = divmod(int(cells[i]), GRID)
        dx, dy = rng.uniform(-0.15, 0.15, size=2)
        objs.append(
            WorldObject(shape, colour, SIZES[int(rng.integers(2))], r, c, float(dx), float(dy))
        )
    return tuple(objs)


# ------------------------------------------------------------------------------ facts
def holds(rel: str, a: WorldObject, b: WorldObject) -> bool:
    """Whether ``a <rel> b`` (``rel`` in :data:`RELATIONS`)."""
    if rel == "left of":
        return a.col < b.col
    if rel == "right of":
        return a.col > b.col
    if rel == "above":
        return a.row < b.row
    if rel == "below":
        return a.row > b.row
    raise ValueError(f"rel: unknown relation {rel!r}; known: {list(RELATIONS)}")


def count(scene: Scene, shape: str | None = None, colour: str | None = None) -> int:
    """Number of objects matching the given shape and/or colour."""
    return sum(
        (shape is None or o.shape == shape) and (colour is None or o.colour == colour)
        for o in scene
    )


def find(scene: Scene, shape: str | None = None, colour: str | None = None) -> list[WorldObject]:
    return [
        o
        for o in scene
        if (shape is None or o.shape == shape) and (colour is None or o.colour == colour)
    ]


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def count_phrase(n: int, noun: str) -> str:
    """``count_phrase(2, "circle") -> "two circles"``, ``(0, ..) -> "no circles"``."""
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else plural(noun)}"


def article(phrase: str) -> str:
    return "an " + phrase if phrase[0] in "aeiou" else "a " + phrase


def object_phrase(o: WorldObject, with_size: bool = False) -> str:
    return f"{o.size} {o.name}" if with_size else o.name


# ------------------------------------------------------------------------------ captions
def scene_caption(scene: Scene) -> str:
    """The scene's canonical caption: every object with its size and position, then counts."""
    parts = [f"{article(object_phrase(o, True))} at the {o.position}" for o in scene]
    text = _join(parts) + "."
    return text[0].upper() + text[1:]


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def random_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption in one of several styles (the pretraining corpus' text side).

    Styles cover what the zero-shot prompts of the three tasks ask about: attribute binding
    (``"a red circle."``), sizes, counts (``"two circles."``, ``"no triangles."``), pairwise
    relations (``"a square left of a red circle."``) and absolute positions.
    """
    style = int(rng.integers(9))
    objs = list(scene)
    order = rng.permutation(len(objs))
    if style == 0:  # full list, some sizes
        parts = [article(object_phrase(objs[i], bool(rng.random() < 0.5))) for i in order]
        return _join(parts) + "."
    if style == 1:  # one object, optionally sized / positioned
        o = objs[int(order[0])]
        text = article(object_phrase(o, bool(rng.random() < 0.5)))
        if rng.random() < 0.4:
            text += f" at the {o.position}"
        return text + "."
    if style == 2 and len(objs) >= 2:  # relation between two objects
        a, b = objs[int(order[0])], objs[int(order[1])]
        rels = [r for r in RELATIONS if holds(r, a, b)]
        rel = rels[int(rng.integers(len(rels)))]
        a_txt = a.name if rng.random() < 0.6 else a.shape
        return f"{article(a_txt)} {rel} {article(b.name)}."
    if style == 3:  # counts of shapes (including absent ones)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if rng.random() < 0.6 and objs:
            shape = objs[int(order[0])].shape
        return count_phrase(count(scene, shape=shape), shape) + "."
    if style == 4:  # counts of colours
        colour = (
            objs[int(order[0])].colour
            if rng.random() < 0.7
            else COLOURS[int(rng.integers(len(COLOURS)))]
        )
        n = count(scene, colour=colour)
        return f"{NUMBER_WORDS[n]} {colour} {'object' if n == 1 else 'objects'}."
    if style == 5:  # positions of some or all objects
        keep = order[: int(rng.integers(1, len(objs) + 1))]
        parts = [f"{article(objs[i].name)} at the {objs[i].position}" for i in keep]
        return _join(parts) + "."
    if style == 7:  # existential / count statements
        o = objs[int(order[0])]
        if rng.random() < 0.5:
            return f"there is {article(object_phrase(o, bool(rng.random() < 0.3)))}."
        n = count(scene, shape=o.shape)
        return f"there {'is' if n == 1 else 'are'} {count_phrase(n, o.shape)}."
    if style == 8:  # "the ..." statements: colour, size, relation
        o = objs[int(order[0])]
        kind = int(rng.integers(3))
        if kind == 0 and count(scene, shape=o.shape) == 1:
            return f"the {o.shape} is {o.colour}."
        if kind == 2 and len(objs) >= 2:
            b = objs[int(order[1])]
            rels = [r for r in RELATIONS if holds(r, o, b)]
            return f"the {o.name} is {rels[int(rng.integers(len(rels)))]} the {b.name}."
        return f"the {o.name} is {o.size}."
    # style 6 (and style 2 with one object): number of objects + list
    n = len(objs)
    head = f"{NUMBER_WORDS[n]} {'object' if n == 1 else 'objects'}"
    return head + ": " + _join([article(objs[i].name) for i in order]) + "."


def perturb_scene(scene: Scene, rng: np.random.Generator, structural: bool = True) -> Scene:
    """A minimally edited scene: one object recoloured, reshaped, resized or moved, or (with
    ``structural``) one object removed or added. The source of hard-negative captions for the
    teacher's pretraining: without structural edits, a caption drawn with the same random choices
    mentions the same objects, so where it differs it is false of the original scene."""
    objs = list(scene)
    i = int(rng.integers(len(objs)))
    o = objs[i]
    used = {(x.shape, x.colour) for x in objs}
    free = [c for c in range(GRID * GRID) if c not in {x.row * GRID + x.col for x in objs}]
    kind = int(rng.integers(6 if structural else 4))
    if kind == 0:
        opts = [c for c in COLOURS if (o.shape, c) not in used]
        objs[i] = replace(o, colour=opts[int(rng.integers(len(opts)))])
    elif kind == 1:
        opts = [s for s in SHAPES if (s, o.colour) not in used]
        objs[i] = replace(o, shape=opts[int(rng.integers(len(opts)))])
    elif kind == 2:
        objs[i] = replace(o, size=SIZES[1 - SIZES.index(o.size)])
    elif kind == 3 and free:
        r, c = divmod(free[int(rng.integers(len(free)))], GRID)
        objs[i] = replace(o, row=r, col=c)
    elif kind == 4 and len(objs) > 1:
        objs.pop(i)
    elif free and len(objs) < MAX_OBJECTS:
        r, c = divmod(free[int(rng.integers(len(free)))], GRID)
        while True:
            shape, colour = (
                SHAPES[int(rng.integers(len(SHAPES)))],
                COLOURS[int(rng.integers(len(COLOURS)))],
            )
            if (shape, colour) not in used:
                break
        objs.append(WorldObject(shape, colour, SIZES[int(rng.integers(2))], r, c))
    else:
        opts = [c for c in COLOURS if (o.shape, c) not in used]
        objs[i] = replace(o, colour=opts[int(rng.integers(len(opts)))])
    return tuple(objs)

"""Vectorised rendering of world scenes into RGB images, in several image domains.

Objects are drawn from signed distance functions (soft 1-px edges), batched over images with numpy
broadcasting, so thousands of 64 px images take about a second.

Domains (same semantics, different pixels):

- ``flat`` — light, nearly uniform background; solid fills in the canonical palette.
- ``textured`` — dark stripe + value-noise backgrounds, objects drawn as thick outlines around a
  striped, darkened interior, a shifted palette, a lighting gradient and pixel noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mad_distill.data.world.scene import COLOURS, GRID, SHAPES, Scene

DOMAINS: tuple[str, ...] = ("flat", "textured")

#: canonical palette (flat domain), RGB 0–255, in :data:`COLOURS` order
_PALETTE_FLAT = np.array(
    [
        [220, 40, 40],  # red
        [40, 170, 60],  # green
        [40, 80, 220],  # blue
        [235, 210, 30],  # yellow
        [150, 50, 190],  # purple
        [40, 200, 210],  # cyan
    ],
    dtype=np.float32,
)
#: shifted palette (textured domain): other shades of the same colour names
_PALETTE_TEXTURED = np.array(
    [
        [255, 90, 70],  # red
        [110, 230, 80],  # green
        [90, 130, 255],  # blue
        [255, 240, 110],  # yellow
        [210, 100, 255],  # purple
        [100, 250, 240],  # cyan
    ],
    dtype=np.float32,
)
_SIZE_RADIUS = {"small": 0.24, "large": 0.40}  # fraction of a grid cell


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"domain: unknown domain {domain!r}; known: {list(DOMAINS)}")
    return domain


def _scene_arrays(scenes: Sequence[Scene], size: int) -> dict[str, np.ndarray]:
    """Per-slot object parameters ``[N, MAX]`` (absent slots: ``present = 0``)."""
    n, m = len(scenes), max((len(s) for s in scenes), default=1)
    cell = size / GRID
    out = {
        "present": np.zeros((n, m), np.float32),
        "cx": np.zeros((n, m), np.float32),
        "cy": np.zeros((n, m), np.float32),
        "r": np.ones((n, m), np.float32),
        "shape": np.zeros((n, m), np.int64),
        "colour": np.zeros((n, m), np.int64),
    }
    for i, scene in enumerate(scenes):
        for j, o in enumerate(scene):
            out["present"][i, j] = 1.0
            out["cx"][i, j] = (o.col + 0.5 + o.dx) * cell
            out["cy"][i, j] = (o.row + 0.5 + o.dy) * cell
            out["r"][i, j] = _SIZE_RADIUS[o.size] * cell
            out["shape"][i, j] = SHAPES.index(o.shape)
            out["colour"][i, j] = COLOURS.index(o.colour)
    return out


def _sdf(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) of each shape id; broadcast ``[N, H, W]``."""
    ax, ay = np.abs(dx), np.abs(dy)
    circle = np.sqrt(dx * dx + dy * dy) - r
    square = np.maximum(ax, ay) - 0.85 * r
    rt = 1.15 * r  # the triangle is inscribed in a larger circle so its area matches
    triangle = np.maximum(0.866 * ax - 0.5 * (dy + rt) + 0.0 * rt, dy - 0.5 * rt)
    arm = 0.36 * r
    cross = np.minimum(np.maximum(ax - r, ay - arm), np.maximum(ax - arm, ay - r))
    stacked = np.stack([circle, square, triangle, cross])  # order of SHAPES
    return np.take_along_axis(stacked, shape[None, :, None, None], axis=0)[0]


def _value_noise(rng_vals: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``[N, g, g]`` random values to ``[N, size, size]``."""
    g = rng_vals.shape[-1]
    pos = (np.arange(size) + 0.5) / size * (g - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, g - 2)
    frac = (pos - lo).astype(np.float32)
    up = np.zeros((size, g), np.float32)
    up[np.arange(size), lo] = 1 - frac
    up[np.arange(size), lo + 1] += frac
    return np.einsum("hg,ngk,wk->nhw", up, rng_vals.astype(np.float32), up)


def render(
    scenes: Sequence[Scene],
    domain: str,
    style_rngs: Sequence[np.random.Generator],
    size: int = 64,
) -> np.ndarray:
    """Render scenes to ``uint8 [N, size, size, 3]``.

    Args:
        scenes: the scenes (see :func:`~mad_distill.data.world.scene.sample_scene`).
        domain: one of :data:`DOMAINS`.
        style_rngs: one generator per scene for the domain's nuisance factors (background,
            lighting, noise), so an image is a pure function of its own seed.
        size: image side in pixels (>= 24).
    """
    check_domain(domain)
    if len(style_rngs) != len(scenes):
        raise ValueError(
            f"style_rngs: need one generator per scene ({len(scenes)}), got {len(style_rngs)}"
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 24:
        raise ValueError(f"size must be an int >= 24, got {size!r}")
    n = len(scenes)
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    p = _scene_arrays(scenes, size)
    yy, xx = np.meshgrid(
        np.arange(size, dtype=np.float32) + 0.5,
        np.arange(size, dtype=np.float32) + 0.5,
        indexing="ij",
    )
    if domain == "flat":
        img = _flat_background(style_rngs, size)
        palette = _PALETTE_FLAT
    else:
        img = _textured_background(style_rngs, size, xx, yy)
        palette = _PALETTE_TEXTURED
    styles = np.array([rng.uniform(0, 1, size=6) for rng in style_rngs], np.float32)  # [N, 6]

    for j in range(p["present"].shape[1]):
        dx = xx[None] - p["cx"][:, j, None, None]
        dy = yy[None] - p["cy"][:, j, None, None]
        sd = _sdf(p["shape"][:, j], dx, dy, p["r"][:, j, None, None])
        present = p["present"][:, j, None, None]
        colour = palette[p["colour"][:, j]]  # [N, 3]
        colour = colour * (0.92 + 0.16 * styles[:, j, None])  # small shade jitter
        if domain == "flat":
            alpha = np.clip(0.5 - sd, 0.0, 1.0) * present
            img = img * (1 - alpha[..., None]) + colour[:, None, None, :] * alpha[..., None]
        else:
            # darkened, striped interior + bright thick outline
            inner = np.clip(0.5 - sd, 0.0, 1.0) * present
            phase = 2 * np.pi * styles[:, 3 + j % 3, None, None]
            stripes = 0.5 + 0.5 * np.sin((dx - dy) * 1.3 + phase)
            fill = colour[:, None, None, :] * (0.25 + 0.25 * stripes[..., None])
            img = img * (1 - inner[..., None]) + fill * inner[..., None]
            ring = np.clip(1.0 - np.abs(sd + 1.2) / 1.2, 0.0, 1.0) * present
            img = img * (1 - ring[..., None]) + colour[:, None, None, :] * ring[..., None]

    if domain == "textured":
        # lighting gradient in a random direction, then sensor noise
        ang = np.array([rng.uniform(0, 2 * np.pi) for rng in style_rngs], np.float32)
        u = (xx[None] - size / 2) * np.cos(ang)[:, None, None] + (yy[None] - size / 2) * np.sin(
            ang
        )[:, None, None]
        img = img * (1.0 + 0.35 * u[..., None] / size)
        noise = np.stack([rng.normal(0, 10, size=(size, size, 3)) for rng in style_rngs])
        img = img + noise.astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _flat_background(style_rngs: Sequence[np.random.Generator], size: int) -> np.ndarray:
    base = np.array(
        [[rng.uniform(205, 240)] * 3 + rng.uniform(-6, 6, size=3) for rng in style_rngs],
        np.float32,
    )
    return np.broadcast_to(base[:, None, None, :], (len(style_rngs), size, size, 3)).copy()


def _textured_background(
    style_rngs: Sequence[np.random.Generator], size: int, xx: np.ndarray, yy: np.ndarray
) -> np.ndarray:
    n = len(style_rngs)
    params = np.array(
        [
            np.concatenate([rng.uniform(0, 1, size=4), rng.uniform(20, 90, size=6)])
            for rng in style_rngs
        ],
        np.float32,
    )
    theta = params[:, 0] * np.pi
    freq = 0.25 + 0.5 * params[:, 1]
    phase = params[:, 2] * 2 * np.pi
    stripes = 0.5 + 0.5 * np.sin(
        freq[:, None, None]
        * (xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None])
        + phase[:, None, None]
    )
    low = np.stack([rng.uniform(0, 1, size=(6, 6)) for rng in style_rngs])
    noise = _value_noise(low, size)
    mix = params[:, 3, None, None]
    t = mix * stripes + (1 - mix) * noise  # [N, H, W] in [0, 1]
    c0, c1 = params[:, 4:7], params[:, 7:10]  # two dark background colours
    bg = c0[:, None, None, :] * (1 - t[..., None]) + c1[:, None, None, :] * t[..., None]
    return bg.reshape(n, size, size, 3)

"""The mini-Emu world: captioned scenes from a small grammar, rendered deterministically from a seed.

A scene has what its caption says (how many objects, their colour and shape, where they are, the background's
colour) and what it does not: hidden parameters that make a render more or less photogenic (exposure, haze, how
garish the background is, subject size, how far the group sits from where it should, stray specks of clutter).
Most scenes drawn by :func:`sample_scene` are mediocre and a few percent are photogenic, as a web-scale corpus is
(Emu, section 3.3); :mod:`world.appeal` scores that from pixels alone.

Pure numpy and Pillow: nothing here imports Django or torch.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

#: Hue (0-1) of each colour word; renders vary saturation and value around it, never the hue's name.
HUES: dict[str, float] = {
    "red": 0.0,
    "orange": 0.075,
    "yellow": 0.155,
    "green": 0.33,
    "blue": 0.62,
    "purple": 0.78,
}
COLOURS = tuple(HUES)
SHAPES = ("circle", "square", "triangle")
COUNTS = (1, 2, 3)
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
#: ``None``: the caption says nothing about position.
POSITIONS = (None, "left", "right", "top", "bottom", "centre")
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
ANCHORS = {
    None: (0.5, 0.5),
    "centre": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}
DEFAULT_SIZE = 64
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What a caption says plus the hidden parameters of one render."""

    shape: str
    colour: str
    count: int
    position: str | None
    background: str
    # Hidden: never in the caption.
    exposure: float = 1.0  # multiplies every pixel; 1 is right
    haze: float = 0.0  # blend towards mid grey; 0 is clear
    background_saturation: float = 0.35
    background_value: float = 0.55
    subject_saturation: float = 0.85
    subject_value: float = 0.9
    scale: float = 1.0  # subject size relative to the nominal size
    offset: tuple[float, float] = (0.0, 0.0)  # of the group from its anchor, in image widths
    specks: tuple[tuple[float, float, float], ...] = field(default_factory=tuple)  # (x, y, hue) of clutter

    def caption(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        words = [COUNT_WORDS[self.count], self.colour, noun]
        if self.position:
            words.append(POSITION_PHRASES[self.position])
        words.append(f"on a {self.background} background")
        return " ".join(words)

    def to_dict(self) -> dict:
        return asdict(self)


def object_centres(scene: Scene) -> list[tuple[float, float]]:
    """Centres of the subject objects, in image fractions."""
    ax, ay = ANCHORS[scene.position]
    r = object_radius(scene)
    step = 2.7 * r
    # Groups run along the free axis: vertically when placed left or right, else horizontally.
    vertical = scene.position in ("left", "right")
    # The whole group stays in frame, however far the hidden offset pushes it.
    half_long, half_short = (scene.count - 1) / 2 * step + r + 0.03, r + 0.03
    half_x, half_y = (half_short, half_long) if vertical else (half_long, half_short)
    cx = min(max(ax + scene.offset[0], half_x), 1 - half_x)
    cy = min(max(ay + scene.offset[1], half_y), 1 - half_y)
    centres = []
    for i in range(scene.count):
        d = (i - (scene.count - 1) / 2) * step
        centres.append((cx, cy + d) if vertical else (cx + d, cy))
    return centres


def object_radius(scene: Scene) -> float:
    return {1: 0.17, 2: 0.13, 3: 0.105}[scene.count] * scene.scale


def _rgb(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(hue % 1.0, saturation, value)


def render(scene: Scene, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The scene as an ``(size, size, 3)`` uint8 array (anti-aliased by supersampling)."""
    big = size * _SUPERSAMPLE
    bg = _rgb(HUES[scene.background], scene.background_saturation, scene.background_value)
    fg = _rgb(HUES[scene.colour], scene.subject_saturation, scene.subject_value)
    image = Image.new("RGB", (big, big), tuple(int(round(c * 255)) for c in bg))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(round(c * 255)) for c in fg)
    r = object_radius(scene) * big
    for cx, cy in object_centres(scene):
        x, y = cx * big, cy * big
        if scene.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif scene.shape == "square":
            s = r * 0.88
            draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
        else:
            draw.polygon([(x, y - r), (x + r * 1.05, y + r * 0.8), (x - r * 1.05, y + r * 0.8)], fill=fill)
    speck_r = 0.028 * big
    for sx, sy, hue in scene.specks:
        speck = tuple(int(round(c * 255)) for c in _rgb(hue, 0.6, 0.8))
        draw.ellipse([sx * big - speck_r, sy * big - speck_r, sx * big + speck_r, sy * big + speck_r], fill=speck)
    image = image.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels * scene.exposure
    pixels = pixels * (1.0 - scene.haze) + 0.5 * scene.haze
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _speck_positions(rng: np.random.Generator, scene: Scene, n: int) -> tuple[tuple[float, float, float], ...]:
    # Specks sit clear of the subject, so the oracle's reading of the subject never depends on them.
    r = object_radius(scene)
    centres = object_centres(scene)
    specks = []
    for _ in range(200):
        if len(specks) == n:
            break
        x, y = rng.uniform(0.06, 0.94, size=2)
        if all((x - cx) ** 2 + (y - cy) ** 2 > (r * 1.25 + 0.06) ** 2 for cx, cy in centres) and all(
            (x - sx) ** 2 + (y - sy) ** 2 > 0.1**2 for sx, sy, _ in specks
        ):
            specks.append((float(x), float(y), float(rng.uniform(0, 1))))
    return tuple(specks)


def hue_distance(a: str, b: str) -> float:
    d = abs(HUES[a] - HUES[b])
    return min(d, 1 - d)


def background_choices(colour: str) -> list[str]:
    """Backgrounds a subject of ``colour`` can stand on: neighbouring hues (red on orange) are never drawn."""
    return [c for c in COLOURS if hue_distance(c, colour) >= 0.14]


def sample_scene(rng: np.random.Generator) -> Scene:
    """One scene of the "web": caption words uniform, hidden parameters mostly mediocre."""
    shape = str(rng.choice(SHAPES))
    colour = str(rng.choice(COLOURS))
    count = int(rng.choice(COUNTS))
    position = POSITIONS[int(rng.integers(len(POSITIONS)))]
    background = str(rng.choice(background_choices(colour)))
    # Positioned groups stay inside their third of the frame; unpositioned ones wander more.
    wander = 0.05 if position else 0.16
    offset = tuple(float(v) for v in rng.uniform(-wander, wander, size=2))
    max_scale = 1.2 if position in (None, "centre") else 1.0
    draft = Scene(
        shape=shape,
        colour=colour,
        count=count,
        position=position,
        background=background,
        exposure=float(np.clip(rng.normal(0.92, 0.22), 0.45, 1.5)),
        haze=float(np.clip(rng.exponential(0.16), 0.0, 0.45)),
        background_saturation=float(rng.uniform(0.3, 1.0)),
        background_value=float(rng.uniform(0.35, 1.0)),
        subject_saturation=float(rng.uniform(0.55, 1.0)),
        subject_value=float(rng.uniform(0.6, 1.0)),
        scale=float(rng.uniform(0.8, max_scale)),
        offset=offset,
    )
    n_specks = int(rng.choice([0, 1, 2, 3, 4, 5], p=[0.2, 0.2, 0.2, 0.15, 0.15, 0.1]))
    return Scene(**{**draft.to_dict(), "offset": offset, "specks": _speck_positions(rng, draft, n_specks)})

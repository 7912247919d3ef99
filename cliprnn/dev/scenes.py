"""A synthetic world with exact masks: coloured, textured shapes on textured backgrounds.

Every scene is a pure function of its seed (and style). Thing classes include confusable pairs
(the same shape in near colours, the same shape in similar textures, near shapes in one colour),
so that querying the whole class list on every image gives CaR distractors to remove.

Scene styles (``STYLES``) change how many things a scene holds, how large they are and how much
of it is background, so that a configuration tuned on one style need not suit another (the
calibration benchmark, ``python -m cliprnn bench-calibration``). The ``"default"`` style is the
world the miniature CLIPs were trained on; its scenes never change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cliprnn.config import SEMANTIC_TEMPLATES
from cliprnn.visual_prompts import apply_visual_prompts

#: RGB colours of the thing classes.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 40),
    "green": (35, 160, 60),
    "blue": (40, 80, 215),
    "purple": (135, 55, 185),
    "pink": (245, 135, 190),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}


@dataclass(frozen=True)
class ThingClass:
    """One thing class: its English name and how it is drawn."""

    name: str
    shape: str  # circle, square, triangle, star, heart, cross, ring, diamond
    colour: str  # a key of COLOURS (the base colour for textured classes)
    texture: str = "plain"  # plain, striped, dotted, checkered


THINGS: tuple[ThingClass, ...] = (
    ThingClass("red circle", "circle", "red"),
    ThingClass("orange circle", "circle", "orange"),
    ThingClass("blue circle", "circle", "blue"),
    ThingClass("dotted circle", "circle", "yellow", "dotted"),
    ThingClass("striped circle", "circle", "white", "striped"),
    ThingClass("red square", "square", "red"),
    ThingClass("green square", "square", "green"),
    ThingClass("striped square", "square", "white", "striped"),
    ThingClass("checkered square", "square", "white", "checkered"),
    ThingClass("yellow triangle", "triangle", "yellow"),
    ThingClass("orange triangle", "triangle", "orange"),
    ThingClass("purple triangle", "triangle", "purple"),
    ThingClass("blue star", "star", "blue"),
    ThingClass("purple star", "star", "purple"),
    ThingClass("yellow star", "star", "yellow"),
    ThingClass("orange star", "star", "orange"),
    ThingClass("red heart", "heart", "red"),
    ThingClass("pink heart", "heart", "pink"),
    ThingClass("green cross", "cross", "green"),
    ThingClass("blue cross", "cross", "blue"),
    ThingClass("black ring", "ring", "black"),
    ThingClass("brown ring", "ring", "brown"),
    ThingClass("white diamond", "diamond", "white"),
    ThingClass("green diamond", "diamond", "green"),
)

#: Thing class names; label value i + 1 in a label map is CLASSES[i].
CLASSES: tuple[str, ...] = tuple(t.name for t in THINGS)

#: Background ("stuff") kinds; each is one of CaR's default background words.
STUFF: tuple[str, ...] = ("sky", "grass", "water", "wall", "road", "ground")

DEFAULT_SIZE = (128, 128)

#: Scene styles ``generate_scene`` draws; see ``SceneStyle`` and ``SCENE_STYLES``.
STYLES: tuple[str, ...] = ("default", "sparse", "crowded", "stuff")
_MIN_VISIBLE = 0.4  # an object keeps at least this fraction of its pixels visible
_MIN_PIXELS = 12


@dataclass(frozen=True)
class SceneStyle:
    """How a style draws its things: counts, sizes, overlap, and one stuff kind or two."""

    counts: tuple[int, ...]  # the number of things drawn ...
    weights: tuple[float, ...]  # ... with these probabilities
    sizes: tuple[float, float]  # an object's diameter as a fraction of the shorter side
    overlap: float = 0.5  # chance that an object is placed next to an earlier one
    attempts: int = 6  # placements tried before an object is left out
    horizon: bool = False  # two stuff kinds, above and below a wavy horizon


#: The styles' drawing rules. ``default`` is the training world (1-4 things, 0.16-0.5 of the
#: side); ``sparse`` has 1-2 large things (0.35-0.6 of the side) that fill much of the image;
#: ``crowded`` has 5-8 small ones (0.12-0.28) that often touch; ``stuff`` is mostly background:
#: two stuff kinds split by a wavy horizon and 1-2 small things (0.12-0.28).
SCENE_STYLES: dict[str, SceneStyle] = {
    "default": SceneStyle((1, 2, 3, 4), (0.2, 0.35, 0.3, 0.15), (0.16, 0.5)),
    "sparse": SceneStyle((1, 2), (0.55, 0.45), (0.35, 0.6), overlap=0.3, attempts=12),
    "crowded": SceneStyle(
        (5, 6, 7, 8), (0.25, 0.25, 0.25, 0.25), (0.12, 0.28), overlap=0.3, attempts=25
    ),
    "stuff": SceneStyle((1, 2), (0.6, 0.4), (0.12, 0.28), overlap=0.2, horizon=True),
}


@dataclass
class SceneObject:
    """One drawn object: its class index, visible pixel count and visible bounding box."""

    class_index: int
    pixels: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the visible pixels

    @property
    def name(self) -> str:
        return CLASSES[self.class_index]


@dataclass
class Scene:
    """A generated image with its exact per-pixel labels.

    ``label_map`` holds 0 for background (stuff) and i + 1 for ``CLASSES[i]``.
    """

    seed: int
    image: np.ndarray  # uint8 [H, W, 3] RGB
    label_map: np.ndarray  # uint8 [H, W]
    stuff: str
    objects: list[SceneObject] = field(default_factory=list)
    #: the ``stuff`` style's second background kind (above the horizon); None otherwise
    upper_stuff: str | None = None

    @property
    def present(self) -> list[int]:
        """Indices into CLASSES of the classes visible in the image, by label value."""
        return sorted(o.class_index for o in self.objects)

    @property
    def present_names(self) -> list[str]:
        return [CLASSES[i] for i in self.present]

    @property
    def caption(self) -> str:
        """An English description of the scene, larger objects first."""
        names = [o.name for o in sorted(self.objects, key=lambda o: -o.pixels)]
        return describe(names, self.stuff)

    def mask(self, class_index: int) -> np.ndarray:
        """Boolean mask of one class."""
        return self.label_map == class_index + 1


def describe(names: Sequence[str], stuff: str | None = None) -> str:
    """'a red circle and a blue star on grass.' style text for objects over a background."""
    items = [f"a {n}" for n in names]
    if not items:
        return f"a photo of {stuff}." if stuff else "a photo."
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    preposition = "in the" if stuff == "sky" else "on"
    return f"{text} {preposition} {stuff}." if stuff else f"{text}."


# --------------------------------------------------------------------------------------------
# backgrounds


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Noise in [-1, 1] smooth over about h / cells pixels."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _fill(h: int, w: int, rgb: Sequence[float]) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.float32), (h, w, 3)).copy()


def _stuff_image(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A float32 RGB background of one stuff kind."""
    fine = rng.normal(0, 1, size=(h, w, 1)).astype(np.float32)
    if kind == "sky":
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        top = np.array([70, 130, 220], np.float32) + rng.uniform(-15, 15, 3)
        img = top * (1 - t) + np.array([165, 200, 240], np.float32) * t
        cloud = np.clip(_smooth_noise(rng, h, w, 4) * 2.5 - 0.8, 0, 1)[..., None]
        img = img * (1 - cloud) + 245 * cloud + fine * 3
    elif kind == "grass":
        img = _fill(h, w, np.array([70, 135, 45]) + rng.uniform(-15, 15, 3))
        img += _smooth_noise(rng, h, w, 8)[..., None] * np.array([12, 25, 8], np.float32)
        blades = np.zeros((h, w), np.float32)
        for _ in range(h * w // 40):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            dx = int(rng.integers(-2, 3))
            cv2.line(
                blades, (x, y), (x + dx, y - int(rng.integers(3, 7))), float(rng.uniform(-1, 1))
            )
        img += blades[..., None] * np.array([20, 35, 15], np.float32) + fine * 6
    elif kind == "water":
        img = _fill(h, w, np.array([30, 95, 165]) + rng.uniform(-12, 12, 3))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 6.3)
        waves = np.sin(yy * rng.uniform(0.5, 0.8) + 2.0 * np.sin(xx * 0.08 + phase))
        img += np.clip(waves - 0.6, 0, 1)[..., None] * 90 + fine * 4
        img += _smooth_noise(rng, h, w, 5)[..., None] * 12
    elif kind == "wall":
        brick = np.array([165, 75, 55], np.float32) + rng.uniform(-15, 15, 3)
        img = _fill(h, w, (200, 195, 185))
        bh, bw = int(rng.integers(7, 11)), int(rng.integers(14, 22))
        for row, y in enumerate(range(0, h, bh)):
            offset = (bw // 2) * (row % 2)
            for x in range(-offset, w, bw):
                shade = brick + rng.uniform(-18, 18)
                img[y + 1 : y + bh, max(x + 1, 0) : max(x + bw, 0)] = shade
        img += fine * 5
    elif kind == "road":
        img = _fill(h, w, np.array([92, 92, 96]) + rng.uniform(-12, 12))
        img += fine * 12 + _smooth_noise(rng, h, w, 6)[..., None] * 8
        y = int(rng.integers(h // 4, 3 * h // 4))
        dash = max(4, w // 10)
        for x in range(int(rng.integers(0, dash)), w, 2 * dash):
            img[y : y + max(2, h // 40), x : x + dash] = (235, 225, 200)
    elif kind == "ground":
        img = _fill(h, w, np.array([140, 105, 70]) + rng.uniform(-15, 15, 3))
        img += _smooth_noise(rng, h, w, 6)[..., None] * 20 + fine * 10
        pebbles = rng.random((h, w)) < 0.01
        img[pebbles] = (95, 80, 65)
    else:
        raise ValueError(f"unknown stuff kind {kind!r}; choose from {list(STUFF)}")
    return img


# --------------------------------------------------------------------------------------------
# things


def _regular_polygon(n: int, r: float, inner: float | None, angle: float) -> np.ndarray:
    points = []
    steps = 2 * n if inner is not None else n  # a star alternates outer and inner points
    for k in range(steps):
        radius = r if inner is None or k % 2 == 0 else inner
        a = angle + np.pi * 2 * k / steps
        points.append((radius * np.cos(a), radius * np.sin(a)))
    return np.array(points)


def _shape_mask(
    shape: str, h: int, w: int, cx: float, cy: float, size: float, angle: float, aspect: float
) -> np.ndarray:
    """Binary mask (uint8 0/1) of one shape; ``size`` is its approximate diameter."""
    m = np.zeros((h, w), np.uint8)
    r = size / 2
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def poly(pts: np.ndarray) -> None:
        pts = pts * np.array([1.0, aspect]) @ rot.T + (cx, cy)
        cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)

    if shape == "circle":
        cv2.ellipse(m, (round(cx), round(cy)), (round(r), round(r * aspect)), 0, 0, 360, 1, -1)
    elif shape == "ring":
        cv2.ellipse(m, (round(cx), round(cy)), (round(r), round(r * aspect)), 0, 0, 360, 1, -1)
        cv2.ellipse(
            m, (round(cx), round(cy)), (round(r * 0.55), round(r * 0.55 * aspect)), 0, 0, 360, 0, -1
        )
    elif shape == "square":
        poly(np.array([[-r, -r], [r, -r], [r, r], [-r, r]]) * 0.85)
    elif shape == "triangle":
        poly(_regular_polygon(3, r * 1.1, None, -np.pi / 2) + np.array([0, r * 0.2]))
    elif shape == "star":
        poly(_regular_polygon(5, r * 1.1, r * 0.45, -np.pi / 2))
    elif shape == "diamond":
        poly(np.array([[0, -r * 1.1], [r * 0.65, 0], [0, r * 1.1], [-r * 0.65, 0]]))
    elif shape == "cross":
        a, b = r, r * 0.33
        poly(
            np.array(
                [
                    [-b, -a],
                    [b, -a],
                    [b, -b],
                    [a, -b],
                    [a, b],
                    [b, b],
                    [b, a],
                    [-b, a],
                    [-b, b],
                    [-a, b],
                    [-a, -b],
                    [-b, -b],
                ]
            )
        )
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        poly(np.stack([x, y], 1) * (r / 16.5))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m


def _texture(
    thing: ThingClass, rng: np.random.Generator, h: int, w: int, cx: float, cy: float
) -> np.ndarray:
    """Float32 RGB fill of a thing's surface (full frame; the shape mask cuts it out)."""
    base = np.array(COLOURS[thing.colour], np.float32) + rng.uniform(-12, 12, 3)
    img = _fill(h, w, np.clip(base, 0, 255))
    dark = np.array([25, 25, 25], np.float32) + rng.uniform(-10, 10, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = float(rng.uniform(5, 8))
    if thing.texture == "striped":
        a = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        img[(u % period) < period / 2] = dark
    elif thing.texture == "checkered":
        a = rng.uniform(-0.3, 0.3)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        img[((u // period) + (v // period)) % 2 == 0] = dark
    elif thing.texture == "dotted":
        u, v = (xx - cx) % period - period / 2, (yy - cy) % period - period / 2
        img[u * u + v * v < (period * 0.28) ** 2] = dark
    # soft shading: lighter towards a random corner
    g = (xx - cx) * rng.uniform(-1, 1) + (yy - cy) * rng.uniform(-1, 1)
    img *= 1 + 0.12 * (g / (np.abs(g).max() + 1e-6))[..., None]
    return img


def _visible_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _horizon_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """True above a wavy horizon at 30-60 % of the height."""
    x = np.arange(w, dtype=np.float32)
    level = h * rng.uniform(0.3, 0.6)
    wave = h * rng.uniform(0.03, 0.1) * np.sin(x * rng.uniform(0.02, 0.08) + rng.uniform(0, 6.3))
    return np.arange(h, dtype=np.float32)[:, None] < (level + wave)[None, :]


def generate_scene(
    seed: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    n_objects: int | None = None,
    stuff: str | None = None,
    style: str = "default",
) -> Scene:
    """The scene of one seed: distinct things (partly overlapping) over stuff.

    ``style`` (one of ``STYLES``, rules in ``SCENE_STYLES``):

    - ``"default"``: 1-4 things, 0.16-0.5 of the shorter side, over one stuff kind. Its scenes
      are bit-identical to those from before styles existed (the training world).
    - ``"sparse"``: 1-2 large things, 0.35-0.6 of the side.
    - ``"crowded"``: 5-8 small things, 0.12-0.28 of the side (fewer when they do not fit).
    - ``"stuff"``: two stuff kinds above and below a wavy horizon, 1-2 small things (0.12-0.28);
      ``stuff`` names the lower kind, ``Scene.upper_stuff`` the upper one.

    Every object keeps at least 40 % of its pixels visible; ``n_objects`` overrides the style's
    count (``n_objects=0`` gives plain stuff); ``stuff`` fixes the (lower) stuff kind.
    """
    if style not in SCENE_STYLES:
        raise ValueError(f"unknown scene style {style!r}; choose from {list(STYLES)}")
    rules = SCENE_STYLES[style]
    h, w = size
    rng = np.random.default_rng(seed)
    kind = stuff if stuff is not None else STUFF[int(rng.integers(len(STUFF)))]
    img = _stuff_image(kind, rng, h, w)
    upper = None
    if rules.horizon:
        upper = STUFF[int(rng.integers(len(STUFF) - 1))]
        upper = upper if upper != kind else STUFF[-1]  # any kind but the lower one
        above = _horizon_mask(rng, h, w)
        img[above] = _stuff_image(upper, rng, h, w)[above]
    labels = np.zeros((h, w), np.uint8)
    if n_objects is None:
        n_objects = int(rng.choice(list(rules.counts), p=list(rules.weights)))
    chosen = rng.choice(len(THINGS), size=n_objects, replace=False)
    areas: dict[int, int] = {}
    side = min(h, w)
    for ci in chosen:
        thing = THINGS[int(ci)]
        for _attempt in range(rules.attempts):
            size_px = side * rng.uniform(*rules.sizes)
            if areas and rng.random() < rules.overlap:  # next to an earlier object: overlap
                ys, xs = np.nonzero(labels)
                k = int(rng.integers(len(xs)))
                cx = xs[k] + rng.normal(0, size_px / 3)
                cy = ys[k] + rng.normal(0, size_px / 3)
            else:
                cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
            angle = rng.uniform(-0.5, 0.5) if thing.shape != "circle" else 0.0
            aspect = rng.uniform(0.8, 1.2)
            m = _shape_mask(thing.shape, h, w, cx, cy, size_px, angle, aspect).astype(bool)
            if m.sum() < max(_MIN_PIXELS * 3, 0.6 * size_px**2 * 0.25):
                continue  # mostly out of frame
            covered = labels[m]
            if any(
                (labels == lv).sum() - (covered == lv).sum() < _MIN_VISIBLE * areas[lv]
                for lv in areas
            ):
                continue
            fill = _texture(thing, rng, h, w, cx, cy)
            img[m] = fill[m]
            labels[m] = ci + 1
            areas[int(ci) + 1] = int(m.sum())
            break
    img += rng.normal(0, 3, size=img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    objects = []
    for lv in sorted(areas):
        vis = labels == lv
        objects.append(SceneObject(lv - 1, int(vis.sum()), _visible_bbox(vis)))
    return Scene(seed, image, labels, kind, objects, upper)


# --------------------------------------------------------------------------------------------
# training pairs for contrastive image-text learning

#: Caption templates: plain variants, then eleven of CaR's classifier templates in the order
#: the miniature CLIPs were trained with them.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a {}",
    "a {}.",
    *(SEMANTIC_TEMPLATES[i] for i in (1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 14)),
)
STUFF_TEMPLATES: tuple[str, ...] = (
    "{}",
    "{}.",
    "a photo of {}.",
    "a clean origami {}.",
    "a photo of the {}.",
    "a photo of a {}.",
)


def prompted_view(image: np.ndarray, mask: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    """``prompts`` drawn for a binary ``mask`` exactly as CaR draws them for a proposal."""
    return apply_visual_prompts(image, mask.astype(np.float32), tuple(prompts), 0.5)


def _perturb_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A proposal-like version of a true mask: dilated, eroded, boxed or blobby."""
    m = mask.astype(np.uint8)
    r = rng.random()
    if r < 0.3:
        k = int(rng.integers(1, 6))
        m = cv2.dilate(m, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
    elif r < 0.45:
        m2 = cv2.erode(m, np.ones((3, 3), np.uint8))
        m = m2 if m2.any() else m
    elif r < 0.6:
        x0, y0, x1, y1 = _visible_bbox(m)
        m = np.zeros_like(m)
        cv2.ellipse(
            m,
            ((x0 + x1) // 2, (y0 + y1) // 2),
            ((x1 - x0) // 2 + 1, (y1 - y0) // 2 + 1),
            0,
            0,
            360,
            1,
            -1,
        )
    return m.astype(bool)


def _random_blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    s = min(h, w)
    cv2.ellipse(
        m,
        (int(rng.integers(0, w)), int(rng.integers(0, h))),
        (int(rng.uniform(0.08, 0.3) * s), int(rng.uniform(0.08, 0.3) * s)),
        float(rng.uniform(0, 180)),
        0,
        360,
        1,
        -1,
    )
    return m.astype(bool)


def _thing_text(names: Sequence[str], rng: np.random.Generator) -> str:
    if len(names) == 1:
        return str(rng.choice(CAPTION_TEMPLATES)).format(names[0])
    return describe(names)


#: Draws visual prompts for one binary mask: (RGB uint8 image, bool mask, prompt names) -> image.
PromptDrawer = Callable[[np.ndarray, np.ndarray, Sequence[str]], np.ndarray]


@dataclass
class TrainingPair:
    """One (image, caption) pair; pairs with equal ``key`` describe the same content.

    ``labels`` names the classes and stuff the image shows (for a prompted view, only what the
    prompt points at): the image-level labels of a vocabulary-wide contrastive loss.
    """

    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    key: str
    kind: str  # scene, crop, prompt, stuff
    labels: tuple[str, ...] = ()


def training_pair(
    seed: int, size: tuple[int, int] = DEFAULT_SIZE, draw: PromptDrawer | None = None
) -> TrainingPair:
    """A contrastive training pair of one seed: a scene, a crop, a prompted view or plain stuff.

    Prompted views (blur/gray outside one object, a red ellipse around it) carry that object's
    caption, so a model learns to read CaR's visual prompts. ``draw(image, mask, prompts)`` draws
    them (default: ``prompted_view``, CaR's own drawing).
    """
    rng = np.random.default_rng([seed, 7])
    r = rng.random()
    if r < 0.08:
        scene = generate_scene(seed, size, n_objects=0)
        return TrainingPair(
            scene.image,
            str(rng.choice(STUFF_TEMPLATES)).format(scene.stuff),
            f"stuff:{scene.stuff}",
            "stuff",
            (scene.stuff,),
        )
    scene = generate_scene(seed, size)
    h, w = size
    if r < 0.33:
        names = [o.name for o in sorted(scene.objects, key=lambda o: -o.pixels)]
        if rng.random() < 0.5:
            caption = describe(names, scene.stuff)
            key = "scene:" + "|".join(sorted(names)) + "@" + scene.stuff
        else:
            caption, key = _thing_text(names, rng), "|".join(sorted(names))
        return TrainingPair(scene.image, caption, key, "scene", (*names, scene.stuff))
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if r < 0.58:
        # a square crop around one object; caption names the objects filling it
        x0, y0, x1, y1 = obj.bbox
        side = int(max(x1 - x0, y1 - y0) * rng.uniform(1.0, 1.6)) + 2
        side = min(side, h, w)
        cx = (x0 + x1) // 2 + int(rng.integers(-side // 6, side // 6 + 1))
        cy = (y0 + y1) // 2 + int(rng.integers(-side // 6, side // 6 + 1))
        left = int(np.clip(cx - side // 2, 0, w - side))
        top = int(np.clip(cy - side // 2, 0, h - side))
        crop_labels = scene.label_map[top : top + side, left : left + side]
        counts = np.bincount(crop_labels.ravel(), minlength=len(CLASSES) + 1)[1:]
        inside = [i for i in np.argsort(-counts) if counts[i] >= 0.08 * side * side]
        names = [CLASSES[i] for i in inside] or [obj.name]
        crop = scene.image[top : top + side, left : left + side]
        crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
        labels = (*names, scene.stuff) if (crop_labels == 0).mean() >= 0.15 else tuple(names)
        return TrainingPair(crop, _thing_text(names, rng), "|".join(sorted(names)), "crop", labels)
    if r < 0.9:
        mask = _perturb_mask(scene.mask(obj.class_index), rng)
        name, key = obj.name, obj.name
    else:
        # a prompt on a background region: the image then shows stuff, not a thing
        mask = _random_blob(rng, h, w) & (scene.label_map == 0)
        if mask.sum() < 30:
            mask = scene.label_map == 0
        name, key = scene.stuff, f"stuff:{scene.stuff}"
    prompts = {
        0: ("blur",),
        1: ("blur", "circle"),
        2: ("circle",),
        3: ("blur", "gray"),
        4: ("gray",),
        5: ("blur", "gray", "circle"),
    }[int(rng.choice(6, p=[0.25, 0.35, 0.1, 0.15, 0.05, 0.1]))]
    rng.integers(1, 4)  # a retired line thickness, still drawn so each seed keeps its caption
    image = (draw or prompted_view)(scene.image, mask, prompts)
    templates = CAPTION_TEMPLATES if key == name else STUFF_TEMPLATES
    caption = str(rng.choice(templates)).format(name)
    return TrainingPair(image, caption, key, "prompt", (name,))

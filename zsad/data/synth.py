"""A seeded synthetic anomaly-detection dataset in the MVTec AD layout (numpy + PIL only, fast).

``make_synthetic(out, seed=0)`` writes::

    <out>/README.txt                                  seed and parameters
    <out>/<class>/train/good/000.png ...              n_train normal images
    <out>/<class>/test/good/000.png ...               n_test_good normal images
    <out>/<class>/test/<defect>/000.png ...           n_test_defect images per defect type
    <out>/<class>/ground_truth/<defect>/000_mask.png  exact masks (0/255, mode L)

Textures (RGB, ``size`` x ``size``): ``weave`` is a basket weave of periodic stripes with a random period and
phase plus sensor noise; ``grain`` is a smooth random field (sum of bilinearly-upsampled noise grids) plus
noise. Any other class name gets one of the two textures (alternating in the order given) with its own seed,
except the object kind below, which only the class named ``part`` gets.

Object (:data:`OBJECTS`): ``part`` is one manufactured part, a hexagon nut seen from above (a hexagon with
chamfered corners and a threaded through-hole, lit from one side, with a soft cast shadow) on a plain, slightly
noisy table. Per image the part moves by up to 3 % of the side and turns by a random angle, so its images are
not stationary: the hole at the centre, the metal around it and the table at the corners look different, and a
patch's content depends on where it lies (unlike ``weave`` and ``grain``). Its pixels are :func:`object_mask`.

Defects (one per defect image, folder named by type), each covering about 0.5-5 % of the image:

- ``scratch``: a thin polyline (3 segments, width ~size/48 px) of a contrasting colour.
- ``blob``: a rotated elliptic stain, a darker tint blended over the texture (the texture stays faintly visible).
- ``missing``: a rectangular patch replaced by a flat, darker colour (texture gone, like a hole).

On ``part`` a defect is planted on the part: its region is cut to the part's fully covered pixels (never the
table, the hole or an anti-aliased edge), its colours are chosen against the part's mean colour, and a placement
that leaves less than 60 % of the drawn region on the part is drawn again (from the image's defect stream), so a
defect on the part covers somewhat less of the image (about 0.4-4 % at 256 px).

The mask is exactly the drawn region, and every mask pixel differs from the defect-free image in at least one
channel (pixels that the blend happened to leave unchanged are nudged), so ``mask == (defective != clean)``.
Every image has its own random stream derived from ``(seed, crc32(class), split/defect, index)``: the same
arguments give byte-identical files, and adding a class or images does not change the others.
"""

from __future__ import annotations

import os
import re
import zlib
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from zsad.atomic import atomic_folder

__all__ = ["make_synthetic", "render_image", "object_mask", "DEFECT_TYPES", "TEXTURES", "OBJECTS", "SYNTH_VERSION"]

SYNTH_VERSION = 1
DEFECT_TYPES = ("scratch", "blob", "missing")
TEXTURES = ("weave", "grain")
#: Object kinds: one part on a plain background, not a stationary texture. Unknown class names alternate between
#: :data:`TEXTURES` only, so adding an object kind changes no other class.
OBJECTS = ("part",)

_TRAIN, _TEST_GOOD, _TEST_DEFECT0 = 0, 1, 2


# ----------------------------------------------------------------------------------------------- textures


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.normal(0.0, 5.0, (size, size, 1)) + rng.normal(0.0, 1.5, (size, size, 3))


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    period = rng.uniform(7.0, 11.0) * size / 128.0
    phase_x, phase_y = rng.uniform(0.0, period, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cell = (np.floor((xx + phase_x) / (2 * period)) + np.floor((yy + phase_y) / (2 * period))) % 2
    stripes_x = np.cos(2 * np.pi * (xx + phase_x) / period)
    stripes_y = np.cos(2 * np.pi * (yy + phase_y) / period)
    pattern = np.where(cell == 0, stripes_x, stripes_y)
    base = np.array([118.0, 128.0, 148.0]) + rng.normal(0.0, 3.0, 3)
    tint = np.array([1.0, 1.0, 0.9])
    return base + 40.0 * pattern[..., None] * tint + _noise(rng, size)


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells + 1, cells + 1))
    t = (np.arange(size) + 0.5) * (cells / size)
    i0 = np.minimum(np.floor(t).astype(np.int64), cells - 1)
    f = t - i0
    f = f * f * (3.0 - 2.0 * f)  # smoothstep: no visible grid lines
    rows = grid[i0] * (1.0 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1.0 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    field = sum(w * _smooth(rng, size, c) for w, c in ((1.0, 3), (0.6, 6), (0.35, 12), (0.2, 24)))
    field = field / max(float(field.std()), 1e-6)
    base = np.array([132.0, 114.0, 92.0]) + rng.normal(0.0, 3.0, 3)
    tint = np.array([1.0, 0.95, 0.85])
    return base + 24.0 * field[..., None] * tint + _noise(rng, size)


_TEXTURE_FUNCS = {"weave": _weave, "grain": _grain}


# ------------------------------------------------------------------------------------------------- object


def _part_distance(x: np.ndarray, y: np.ndarray, apothem: float, theta: float) -> np.ndarray:
    """Signed distance (px, negative inside) to a hexagon nut's outline: hexagon of ``apothem`` turned by
    ``theta``, corners cut by a circle (the chamfer), minus the central hole."""
    r = np.hypot(x, y)
    faces = np.max([x * np.cos(theta + k * np.pi / 3) + y * np.sin(theta + k * np.pi / 3) for k in range(6)], axis=0)
    outer = np.maximum(faces - apothem, r - _CHAMFER * apothem)
    return np.maximum(outer, _HOLE * apothem - r)


_CHAMFER, _HOLE, _THREAD = 1.08, 0.36, 1.4  # chamfer circle, hole and thread radii in apothems


def _part(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A hexagon nut on a plain table: ``(image, inside)``, the float RGB image and the fully covered pixels."""
    cx, cy = size / 2.0 + rng.uniform(-0.03, 0.03, 2) * size
    theta = rng.uniform(0.0, np.pi / 3.0)  # the hexagon's symmetry: every orientation
    apothem = 0.27 * size * rng.uniform(0.98, 1.02)
    light = rng.uniform(-0.2, 0.2) + 1.25 * np.pi  # light from the upper left (image y points down)
    metal = np.array([150.0, 152.0, 157.0]) + rng.normal(0.0, 3.0) + rng.normal(0.0, 1.0, 3)  # lot and light
    table = np.array([201.0, 198.0, 190.0]) + rng.normal(0.0, 3.0) + rng.normal(0.0, 1.0, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    x, y = xx - cx, yy - cy
    d = _part_distance(x, y, apothem, theta)
    cover = np.clip(0.5 - d, 0.0, 1.0)  # one-pixel anti-aliased edge
    r = np.hypot(x, y)
    toward = -(x * np.cos(light) + y * np.sin(light)) / apothem  # > 0 on the side facing the light
    shade = 16.0 * toward
    shade = shade + np.where(r > 0.95 * apothem, 18.0 + 10.0 * toward, 0.0)  # chamfer ring at the corners
    thread = (r < _THREAD * _HOLE * apothem).astype(np.float64)
    shade = shade - thread * (30.0 + 8.0 * np.cos(2.0 * np.pi * r / max(size / 64.0, 1.0)))
    shade = shade + 3.0 * np.cos(2.0 * np.pi * r / max(size / 45.0, 1.0))  # faint turning marks
    part = metal + shade[..., None]
    offset = 0.025 * size  # the cast shadow falls away from the light
    sd = _part_distance(x + offset * np.cos(light), y + offset * np.sin(light), apothem, theta)
    shadow = np.clip(0.5 - sd / (0.03 * size), 0.0, 1.0)
    ground = table + 6.0 * ((xx + yy) / size - 1.0)[..., None]
    ground = ground * (1.0 - 0.22 * shadow)[..., None]
    img = cover[..., None] * part + (1.0 - cover[..., None]) * ground
    return img + _noise(rng, size), d <= -0.5


#: fewest share of a drawn defect region that must fall on the part, and how many placements are tried
_ON_PART, _PLACEMENTS = 0.6, 64


def _planted(group: str, img: np.ndarray, inside: np.ndarray, rng: np.random.Generator):
    """A defect of type ``group`` drawn on the part only: ``(drawn, mask)`` with ``mask`` inside ``inside``."""
    fill = img.copy()
    fill[~inside] = img[inside].mean(axis=0)  # the defects choose their colours from the mean: the part's
    best = (-1.0, fill, np.zeros(inside.shape, dtype=bool))
    for _ in range(_PLACEMENTS):
        drawn, region = _DEFECT_FUNCS[group](fill, rng)
        mask = region & inside
        share = float(mask.sum()) / max(int(region.sum()), 1)
        if share > best[0]:
            best = (share, drawn, mask)
        if share >= _ON_PART:
            break
    return best[1], best[2]


def _texture_for(cls: str, classes: Sequence[str]) -> str:
    if cls in _TEXTURE_FUNCS or cls in OBJECTS:
        return cls
    return TEXTURES[list(classes).index(cls) % len(TEXTURES)] if cls in classes else TEXTURES[0]


# ------------------------------------------------------------------------------------------------ defects


def _contrast_colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mean = img.reshape(-1, 3).mean(axis=0)
    delta = rng.uniform(70.0, 100.0)
    sign = -1.0 if mean.mean() > 110.0 else 1.0
    return np.clip(mean + sign * delta, 0.0, 255.0)


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    width = max(2, int(round(size / 48.0)))
    margin = 0.1 * size
    length = rng.uniform(0.35, 0.6) * size
    angle = rng.uniform(0.0, np.pi)
    # start so that the straight-line extent fits; jittered segments are clipped inside the margin
    dx, dy = np.cos(angle) * length, np.sin(angle) * length
    x0 = rng.uniform(margin + max(0.0, -dx), size - margin - max(0.0, dx))
    y0 = rng.uniform(margin + max(0.0, -dy), size - margin - max(0.0, dy))
    points = [(x0, y0)]
    for _ in range(3):
        a = angle + rng.uniform(-0.3, 0.3)
        x = float(np.clip(points[-1][0] + np.cos(a) * length / 3, margin, size - margin))
        y = float(np.clip(points[-1][1] + np.sin(a) * length / 3, margin, size - margin))
        points.append((x, y))
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([(round(x), round(y)) for x, y in points], fill=255, width=width, joint="curve")
    mask = np.asarray(canvas) > 0
    colour = _contrast_colour(img, rng)
    painted = colour + rng.normal(0.0, 4.0, img.shape)
    return np.where(mask[..., None], painted, img), mask


def _blob(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    a = rng.uniform(0.06, 0.11) * size
    b = a * rng.uniform(0.6, 1.0)
    theta = rng.uniform(0.0, np.pi)
    cx, cy = rng.uniform(a + 0.05 * size, size - a - 0.05 * size, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    mean = img.reshape(-1, 3).mean(axis=0)
    stain = mean * np.array([0.55, 0.45, 0.35]) * rng.uniform(0.8, 1.1)
    alpha = rng.uniform(0.55, 0.75)
    blended = img * (1.0 - alpha) + stain * alpha
    return np.where(mask[..., None], blended, img), mask


def _missing(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    w = int(round(rng.uniform(0.1, 0.2) * size))
    h = int(round(rng.uniform(0.1, 0.2) * size))
    x0 = int(rng.integers(int(0.05 * size), size - w - int(0.05 * size) + 1))
    y0 = int(rng.integers(int(0.05 * size), size - h - int(0.05 * size) + 1))
    mask = np.zeros((size, size), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    flat = img.reshape(-1, 3).mean(axis=0) * rng.uniform(0.5, 0.7)
    return np.where(mask[..., None], flat, img), mask


_DEFECT_FUNCS = {"scratch": _scratch, "blob": _blob, "missing": _missing}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _rng(seed: int, cls: str, group: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(cls.encode("utf-8")), group, index, stream])


def _group_code(group: str) -> int:
    if group == "train":
        return _TRAIN
    if group == "good":
        return _TEST_GOOD
    if group in _DEFECT_FUNCS:
        return _TEST_DEFECT0 + DEFECT_TYPES.index(group)
    raise ValueError(f"group must be 'train', 'good' or one of {DEFECT_TYPES}, got {group!r}")


def _clean(cls: str, index: int, seed: int, code: int, size: int, texture: str | None):
    """The defect-free float image and, for an object kind, its fully covered pixels (None for a texture)."""
    texture = texture or (cls if cls in _TEXTURE_FUNCS or cls in OBJECTS else TEXTURES[0])
    rng = _rng(seed, cls, code, index, 0)
    if texture in OBJECTS:
        return _part(rng, size)
    if texture not in _TEXTURE_FUNCS:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES + OBJECTS}")
    return _TEXTURE_FUNCS[texture](rng, size), None


def render_image(
    cls: str,
    index: int,
    *,
    seed: int = 0,
    group: str = "train",
    size: int = 128,
    texture: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image of the synthetic set: ``(clean, image, mask)``.

    ``group`` is ``"train"``, ``"good"`` (normal test) or a defect type. ``clean`` and ``image`` are
    ``(size, size, 3)`` uint8 (equal for normal groups); ``mask`` is ``(size, size)`` bool and equals
    ``(image != clean).any(-1)`` exactly. ``texture`` defaults to the class name when it is a known texture or
    object kind; on an object (:data:`OBJECTS`) the mask lies inside :func:`object_mask`.

    Parameters
    ----------
    cls : str
        Class name; with ``seed``, ``group`` and ``index`` it seeds the image's own random stream (``crc32`` of the
        name), and it picks the default texture.
    index : int
        Index of the image within its class and group.
    seed : int, default 0
        Seed of the dataset.
    group : str, default "train"
        ``"train"``, ``"good"`` (normal test) or one of :data:`DEFECT_TYPES`.
    size : int, default 128
        Side of the square image in pixels (not checked here; :func:`make_synthetic` requires >= 32).
    texture : str, optional
        One of :data:`TEXTURES` or :data:`OBJECTS`. None (or empty): ``cls`` when it is a known texture or object
        kind, else ``"weave"`` (:func:`make_synthetic` instead alternates the textures over unknown class names).

    Returns
    -------
    clean : np.ndarray
        ``(size, size, 3)`` uint8, the defect-free image.
    image : np.ndarray
        ``(size, size, 3)`` uint8, the image with its defect drawn (a copy of ``clean`` for normal groups).
    mask : np.ndarray
        ``(size, size)`` bool, the defect's pixels (all False for normal groups).

    Raises
    ------
    ValueError
        An unknown ``group`` or ``texture``.
    """
    code = _group_code(group)
    clean_f, inside = _clean(cls, index, seed, code, size, texture)
    clean = _to_uint8(clean_f)
    mask = np.zeros((size, size), dtype=bool)
    if code < _TEST_DEFECT0:
        return clean, clean.copy(), mask
    defect_rng = _rng(seed, cls, code, index, 1)
    if inside is None:
        drawn, mask = _DEFECT_FUNCS[group](clean.astype(np.float64), defect_rng)
    else:
        drawn, mask = _planted(group, clean.astype(np.float64), inside, defect_rng)
    image = _to_uint8(drawn)
    image[~mask] = clean[~mask]
    # a blend can leave a pixel (by chance) equal to its clean value: nudge it so the mask is exactly "changed"
    same = mask & ~(image != clean).any(axis=-1)
    if same.any():
        bright = clean[same].astype(np.int16).mean(axis=-1, keepdims=True) > 127
        image[same] = np.clip(clean[same].astype(np.int16) + np.where(bright, -8, 8), 0, 255).astype(np.uint8)
    return clean, image, mask


def object_mask(
    cls: str,
    index: int,
    *,
    seed: int = 0,
    group: str = "train",
    size: int = 128,
    texture: str | None = None,
) -> np.ndarray:
    """The pixels of the object in the image :func:`render_image` renders with the same arguments.

    For an object kind (:data:`OBJECTS`) these are the part's fully covered pixels (not the background, the hole
    or the anti-aliased edge), where the defects are planted; a texture covers the whole image.

    Parameters
    ----------
    cls : str
        Class name, as for :func:`render_image`.
    index : int
        Index of the image within its class and group.
    seed : int, default 0
        Seed of the dataset.
    group : str, default "train"
        ``"train"``, ``"good"`` (normal test) or one of :data:`DEFECT_TYPES`.
    size : int, default 128
        Side of the square image in pixels.
    texture : str, optional
        As for :func:`render_image`.

    Returns
    -------
    np.ndarray
        ``(size, size)`` bool; all True for a texture. The defect's mask of the same image lies inside it.

    Raises
    ------
    ValueError
        An unknown ``group`` or ``texture``.
    """
    _, inside = _clean(cls, index, seed, _group_code(group), size, texture)
    return np.ones((size, size), dtype=bool) if inside is None else inside


# ------------------------------------------------------------------------------------------------- writer


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


README_NAME = "README.txt"
_README_HEAD = "Synthetic anomaly-detection dataset (MVTec AD layout), generated by zsad.data.synth.make_synthetic."
_TREE_FILE = re.compile(r"^[^/]+/(train|test|ground_truth)/[^/]+/[^/]+[.]png$")


def is_synthetic_tree(path: str | os.PathLike) -> bool:
    """True when ``path`` holds only what :func:`make_synthetic` writes: its README and PNGs in the MVTec layout
    (so replacing it loses nothing the generator cannot write again).

    Parameters
    ----------
    path : str or os.PathLike
        The folder to inspect.

    Returns
    -------
    bool
        True when ``path/README.txt`` is readable UTF-8 starting with the generator's header line, no entry under
        ``path`` is a symlink, and every other file is a ``<class>/{train,test,ground_truth}/<folder>/<name>.png``;
        False otherwise (also for a missing folder or README).
    """
    path = Path(path)
    try:
        if not (path / README_NAME).read_text(encoding="utf-8").startswith(_README_HEAD):
            return False
    except (OSError, UnicodeDecodeError):
        return False
    for entry in path.rglob("*"):
        rel = entry.relative_to(path).as_posix()
        if entry.is_symlink() or (entry.is_file() and rel != README_NAME and not _TREE_FILE.match(rel)):
            return False
    return True


def _readme(seed, classes, textures, n_train, n_test_good, n_test_defect, size, defect_types) -> str:
    lines = [
        _README_HEAD,
        f"generator_version: {SYNTH_VERSION}",
        f"seed: {seed}",
        f"classes: {', '.join(classes)}",
        f"textures: {', '.join(f'{c}={t}' for c, t in zip(classes, textures))}",
        f"size: {size}",
        f"n_train: {n_train}",
        f"n_test_good: {n_test_good}",
        f"n_test_defect (per defect type): {n_test_defect}",
        f"defect_types: {', '.join(defect_types)}",
        "layout: <class>/train/good/NNN.png, <class>/test/good/NNN.png, <class>/test/<defect>/NNN.png,",
        "        <class>/ground_truth/<defect>/NNN_mask.png (0/255; exactly the changed pixels)",
        "regenerate: zsad.data.make_synthetic(out, seed=..., classes=..., n_train=..., n_test_good=...,",
        "            n_test_defect=..., size=...)",
    ]
    return "\n".join(lines) + "\n"


def make_synthetic(
    out: str | PathLike,
    *,
    seed: int = 0,
    classes: Sequence[str] = ("weave", "grain"),
    n_train: int = 8,
    n_test_good: int = 4,
    n_test_defect: int = 4,
    size: int = 128,
    overwrite: bool = False,
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> Path:
    """Write a synthetic MVTec-layout tree to ``out`` and return its absolute path.

    ``n_test_defect`` is per defect type. A non-empty ``out`` is refused (``FileExistsError``) unless it is a tree
    this function wrote (:func:`is_synthetic_tree`) and ``overwrite=True``, in which case it is replaced; any other
    folder is never replaced. The tree is built in a temporary sibling folder and moved
    into place, so an interrupted run never leaves a half-written tree at ``out``.

    Parameters
    ----------
    out : str or os.PathLike
        The folder to write (``~`` is expanded); a missing path or an empty folder is accepted.
    seed : int, default 0
        Seed of the dataset (an int >= 0): the same arguments give byte-identical files.
    classes : str or sequence of str, default ("weave", "grain")
        Distinct class names, each a plain folder name (a single string is one class). ``weave`` and ``grain`` get
        their own texture and ``part`` the object (:data:`OBJECTS`, a hexagon nut on a table); other names
        alternate between the two textures in the order given.
    n_train : int, default 8
        Normal training images per class (``<class>/train/good``).
    n_test_good : int, default 4
        Normal test images per class (``<class>/test/good``).
    n_test_defect : int, default 4
        Defective test images per class and defect type, each with its mask under ``<class>/ground_truth``.
    size : int, default 128
        Side of the square images in pixels (>= 32).
    overwrite : bool, default False
        Replace ``out`` when it is a non-empty synthetic tree written by this function.
    defect_types : sequence of str, default DEFECT_TYPES
        Distinct defect types to draw, from :data:`DEFECT_TYPES`.

    Returns
    -------
    pathlib.Path
        The absolute path of ``out``.

    Raises
    ------
    ValueError
        A ``seed`` or image count that is not an int >= 0, ``size`` < 32, an empty or repeated class list, a class
        name that is not a plain folder name, unknown or repeated ``defect_types``, or all image counts 0.
    FileExistsError
        ``out`` exists and is not a folder; is a non-empty folder that is not a synthetic tree (overwrite or not);
        or is a synthetic tree and ``overwrite`` is False.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    n_train = _check_count("n_train", n_train)
    n_test_good = _check_count("n_test_good", n_test_good)
    n_test_defect = _check_count("n_test_defect", n_test_defect)
    size = _check_count("size", size)
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    classes = [classes] if isinstance(classes, str) else list(classes)
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be a non-empty list of distinct names, got {classes!r}")
    for c in classes:
        if not isinstance(c, str) or not c or c.startswith(".") or "/" in c or "\\" in c or c in ("..",):
            raise ValueError(f"invalid class name {c!r} (must be a plain folder name)")
    defect_types = list(defect_types)
    unknown = [d for d in defect_types if d not in _DEFECT_FUNCS]
    if unknown or len(set(defect_types)) != len(defect_types):
        raise ValueError(f"defect_types must be distinct names from {DEFECT_TYPES}, got {defect_types!r}")
    if n_train + n_test_good + n_test_defect * len(defect_types) == 0:
        raise ValueError("nothing to generate: all image counts are 0")

    out_path = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    if out_path.exists():
        if not out_path.is_dir():
            raise FileExistsError(f"{out_path} exists and is not a folder")
        if any(out_path.iterdir()):
            if not is_synthetic_tree(out_path):
                raise FileExistsError(f"{out_path} is not empty and is not a synthetic tree written by zsad (or holds "
                                      "files it did not write); refusing to replace it, overwrite or not")
            if not overwrite:
                raise FileExistsError(f"{out_path} is not empty (a synthetic tree); pass --overwrite "
                                      "(overwrite=True) to replace it")

    textures = [_texture_for(c, classes) for c in classes]
    with atomic_folder(out_path, replace=True) as tmp:
        for cls, texture in zip(classes, textures):
            base = tmp / cls
            for i in range(n_train):
                _, img, _ = render_image(cls, i, seed=seed, group="train", size=size, texture=texture)
                _save_png(img, base / "train" / "good" / f"{i:03d}.png")
            for i in range(n_test_good):
                _, img, _ = render_image(cls, i, seed=seed, group="good", size=size, texture=texture)
                _save_png(img, base / "test" / "good" / f"{i:03d}.png")
            for defect in defect_types:
                for i in range(n_test_defect):
                    _, img, mask = render_image(cls, i, seed=seed, group=defect, size=size, texture=texture)
                    _save_png(img, base / "test" / defect / f"{i:03d}.png")
                    _save_png(mask.astype(np.uint8) * 255, base / "ground_truth" / defect / f"{i:03d}_mask.png")
        (tmp / README_NAME).write_text(
            _readme(int(seed), classes, textures, n_train, n_test_good, n_test_defect, size, defect_types),
            encoding="utf-8",
        )
    return out_path

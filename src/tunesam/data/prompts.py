"""Prompt simulation (the paper, section 2.3) for the point and box modes.

The prompted object is one connected component of one class: a box (its tight box plus
noise of standard deviation 10% of the box size per side, at most 20 px at 1024 input,
scaled with the input size) or a point (sampled among the component's pixels whose
distance to the component's edge is above the median). The paper uses the same rules "during
both training and inference" (section 4.5), so evaluation draws its prompts by them too, from
a generator seeded per image (:func:`image_rng`): reruns and every strategy scored on the same
data see the same prompts.

``rules="code"`` follows the authors' released code instead of the paper's text: each box side
moved outwards by a uniform 0-10% of the box's size, and points drawn from the top 10% of
edge distances. ``rules="tight"`` is deterministic: the tight box, or the point farthest from
the edge, as MedSAM's evaluation prompts (and what every rule gives without a generator).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

NOISE_FRACTION = 0.1
MAX_NOISE_AT_1024 = 20.0
CODE_GROWTH = 0.1  # rules="code": each side grows by U(0, 10%) of the box size
CODE_POINT_QUANTILE = 0.9  # rules="code": points from the top 10% of edge distances
RULES = ("paper", "code", "tight")
EVAL_STREAM = 2**31 - 1  # keeps evaluation's generators apart from training's (seed, epoch, slice)
RULE_TEXT = {
    "paper": "the paper's rule: tight box plus Gaussian noise (sd 10% of its size, at most 20 px at 1024), or a point "
             "deeper than the median edge distance",
    "code": "the authors' released code: box sides grown by U(0, 10%), or a point in the top 10% of edge distances",
    "tight": "the tight box, or the point farthest from the edge (MedSAM's evaluation)",
}


@dataclass(frozen=True)
class Prompt:
    """One prompt in model-input pixel coordinates (x, y)."""

    box: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (labels, count)."""
    return ndimage.label(mask, structure=np.ones((3, 3), int))


def image_rng(seed: int, row: int) -> np.random.Generator:
    """The generator of one image's evaluation prompts (store ``row``, a run's ``seed``)."""
    return np.random.default_rng([EVAL_STREAM, seed, row])


def box_prompt(component: np.ndarray, image_size: int, rng: np.random.Generator | None,
               rules: str = "paper") -> Prompt:
    ys, xs = np.nonzero(component)
    x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    if rules == "tight":
        rng = None
    if rng is not None and rules == "code":
        w, h = x1 - x0 + 1, y1 - y0 + 1
        grow = rng.uniform(0.0, CODE_GROWTH, 4) * np.array([w, h, w, h])
        x0, y0, x1, y1 = x0 - grow[0], y0 - grow[1], x1 + grow[2], y1 + grow[3]
    elif rng is not None:
        cap = MAX_NOISE_AT_1024 * image_size / 1024
        w, h = x1 - x0 + 1, y1 - y0 + 1
        noise = rng.normal(0.0, 1.0, 4) * NOISE_FRACTION * np.array([w, h, w, h])
        noise = np.clip(noise, -cap, cap)
        x0, y0, x1, y1 = x0 + noise[0], y0 + noise[1], x1 + noise[2], y1 + noise[3]
    hi = image_size - 1
    x0, x1 = sorted((float(np.clip(x0, 0, hi)), float(np.clip(x1, 0, hi))))
    y0, y1 = sorted((float(np.clip(y0, 0, hi)), float(np.clip(y1, 0, hi))))
    return Prompt(box=(x0, y0, x1, y1))


def point_prompt(component: np.ndarray, rng: np.random.Generator | None, rules: str = "paper") -> Prompt:
    dist = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
    if rng is None or rules == "tight":
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return Prompt(point=(float(x), float(y)))
    inside = dist[component]
    if rules == "code":
        ys, xs = np.nonzero(component & (dist >= np.quantile(inside, CODE_POINT_QUANTILE)))
    else:
        ys, xs = np.nonzero(component & (dist > np.median(inside)))
    if ys.size == 0:  # thin objects: every pixel is at the median distance
        ys, xs = np.nonzero(component)
    i = int(rng.integers(len(ys)))
    return Prompt(point=(float(xs[i]), float(ys[i])))


def simulate(component: np.ndarray, mode: str, image_size: int, rng: np.random.Generator | None,
             rules: str = "paper") -> Prompt:
    """A ``box`` or ``point`` prompt for one component; ``rules`` ``paper``, ``code`` or
    ``tight`` (see the module). Without a generator every rule gives the tight prompt."""
    if rules not in RULES:
        raise ValueError(f"prompt rules must be one of {', '.join(RULES)}, got {rules!r}")
    if mode == "box":
        return box_prompt(component, image_size, rng, rules)
    if mode == "point":
        return point_prompt(component, rng, rules)
    raise ValueError(f"prompt mode must be box or point, got {mode!r}")


def pick_class(mask: np.ndarray, rng: np.random.Generator) -> int:
    """A random class among those present in ``mask`` (which must have one)."""
    classes = [int(c) for c in np.unique(mask) if c != 0]
    return classes[int(rng.integers(len(classes)))]


def pick_object(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random connected component of a random class present in ``mask`` (boolean)."""
    labels, n = components(mask == pick_class(mask, rng))
    return labels == int(rng.integers(1, n + 1))

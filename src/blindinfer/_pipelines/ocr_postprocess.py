"""OCR pre/post-processing in numpy/scipy: DB text-region boxes, CTC decoding, reading order.

Written for this project (no OpenCV, no pyclipper): every step is vectorised over connected
components, so the work per request grows with the detector's map size (bounded by the
detector's input side), never with a Python loop over the components found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_ELONGATED = 4.0  # variance ratio (aspect ~2) under which a region is taken as upright


@dataclass(frozen=True)
class Regions:
    """Text regions found in the detector's probability map, in detector pixels.

    ``quads``: [n, 4, 2] corners (top-left, top-right, bottom-right, bottom-left) of each
    rotated rectangle after unclipping; ``scores``: mean probability inside each region."""

    quads: np.ndarray
    scores: np.ndarray


def db_regions(
    prob: np.ndarray,
    *,
    thresh: float,
    box_thresh: float,
    unclip_ratio: float,
    min_side: float,
) -> Regions:
    """DB post-processing of one probability map (H x W, values in [0, 1]).

    Binarise at ``thresh``, dilate 2x2, take 8-connected components; each one gets the rectangle
    of its pixels along its principal axis (an upright one when it is not elongated), which must
    be at least ``min_side`` thick and hold a mean probability of at least ``box_thresh``; it is
    then grown on every side by area * unclip_ratio / perimeter (the DB "unclip" of a rectangle).
    """
    from scipy import ndimage

    mask = prob > thresh
    mask = ndimage.binary_dilation(mask, structure=np.ones((2, 2), dtype=bool))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    empty = Regions(np.zeros((0, 4, 2), np.float64), np.zeros(0, np.float64))
    if n == 0:
        return empty
    flat = labels.ravel()
    on = flat > 0
    lab = flat[on] - 1
    ys, xs = np.divmod(np.flatnonzero(on), labels.shape[1])
    x = xs.astype(np.float64)
    y = ys.astype(np.float64)
    count = np.bincount(lab, minlength=n).astype(np.float64)
    mx = np.bincount(lab, x, n) / count
    my = np.bincount(lab, y, n) / count
    dx = x - mx[lab]
    dy = y - my[lab]
    cxx = np.bincount(lab, dx * dx, n) / count
    cyy = np.bincount(lab, dy * dy, n) / count
    cxy = np.bincount(lab, dx * dy, n) / count
    # principal axis, folded into (-45, 45] degrees of the horizontal
    theta = 0.5 * np.arctan2(2.0 * cxy, cxx - cyy)
    theta = np.where(theta > np.pi / 4, theta - np.pi / 2, theta)
    theta = np.where(theta <= -np.pi / 4, theta + np.pi / 2, theta)
    spread = np.sqrt((cxx - cyy) ** 2 + 4.0 * cxy * cxy)
    big = 0.5 * (cxx + cyy + spread)
    small = 0.5 * (cxx + cyy - spread)
    theta = np.where(big < _ELONGATED * np.maximum(small, 1e-9), 0.0, theta)
    cos, sin = np.cos(theta), np.sin(theta)
    u = dx * cos[lab] + dy * sin[lab]  # along the line
    v = -dx * sin[lab] + dy * cos[lab]  # across it
    index = np.arange(n)
    u0 = ndimage.minimum(u, lab, index) - 0.5
    u1 = ndimage.maximum(u, lab, index) + 0.5
    v0 = ndimage.minimum(v, lab, index) - 0.5
    v1 = ndimage.maximum(v, lab, index) + 0.5
    width, height = u1 - u0, v1 - v0
    score = np.bincount(lab, prob.ravel()[on], n) / count
    keep = (np.minimum(width, height) >= min_side) & (score >= box_thresh)
    if not keep.any():
        return empty
    grow = width * height * unclip_ratio / (2.0 * (width + height))
    u0, u1, v0, v1 = u0 - grow, u1 + grow, v0 - grow, v1 + grow
    corners_u = np.stack([u0, u1, u1, u0], axis=1)
    corners_v = np.stack([v0, v0, v1, v1], axis=1)
    qx = mx[:, None] + corners_u * cos[:, None] - corners_v * sin[:, None]
    qy = my[:, None] + corners_u * sin[:, None] + corners_v * cos[:, None]
    quads = np.stack([qx, qy], axis=2)[keep]
    # pixel-centre coordinates -> pixel-edge coordinates
    quads = quads + 0.5
    return Regions(quads, score[keep])


def reading_order(quads: np.ndarray) -> list[int]:
    """Indices of text-line quads [n, 4, 2] (top-left, top-right, bottom-right, bottom-left) in
    reading order: rows top to bottom, left to right within a row.

    Lines are taken by the height of their centre; a line joins the current row when its centre
    lies within half a line height of the row's first line, extended along that line's slope
    (so the halves of a skewed row stay one row while the next row, whose axis-aligned boxes
    may overlap this one's, does not)."""
    n = len(quads)
    centre = quads.mean(axis=1)
    along = quads[:, 1] - quads[:, 0]
    slope = along[:, 1] / np.maximum(np.abs(along[:, 0]), 1e-6)
    height = np.hypot(*(quads[:, 3] - quads[:, 0]).T)
    order = sorted(range(n), key=lambda i: (float(centre[i, 1]), float(centre[i, 0])))
    rows: list[list[int]] = []
    for i in order:
        if rows:
            first = rows[-1][0]
            expect = centre[first, 1] + slope[first] * (centre[i, 0] - centre[first, 0])
            if abs(centre[i, 1] - expect) <= 0.5 * min(height[first], height[i]):
                rows[-1].append(i)
                continue
        rows.append([i])
    out: list[int] = []
    for row in rows:
        out.extend(sorted(row, key=lambda i: float(centre[i, 0])))
    return out


def ctc_greedy(probs: np.ndarray, charset: Sequence[str]) -> tuple[str, float]:
    """Best-path CTC decoding of one [T, C] probability sequence (class 0 is the blank):
    argmax per step, repeats collapsed, blanks dropped. Returns the text and the mean
    probability of the characters kept (0 when none)."""
    best = probs.argmax(axis=1)
    peak = probs.max(axis=1)
    keep = best != 0
    keep[1:] &= best[1:] != best[:-1]
    if not keep.any():
        return "", 0.0
    return "".join(charset[int(k)] for k in best[keep]), float(peak[keep].mean())

"""The neck below the jaw, found from the subject's own skin colour rather than a fixed band.

A fixed band below the chin keeps what lies there: a shirt collar, a tie knot, a turtleneck, part of a
lapel. Instead, a colour model of the face's skin (the chroma of the cheeks and nose: Cr, Cb in YCbCr,
a robust mean and covariance) picks skin pixels inside the matte, below the jaw line of the face mesh
and within a generous band; the neck is the part of them connected to the jaw line (so skin-coloured
background or hands further down do not count), closed and hole-filled. A collar or a scarf that
covers the neck is left out, as BiSeNet's "cloth" class would be.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# MediaPipe face-mesh indices
JAW_LINE = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323,
            454)  # lower face outline, the subject's right ear to the left, through the chin (152)
NOSE_BRIDGE, UPPER_LIP = 168, 0
NECK_REACH = 1.0     # how far below the chin the neck may reach, in face heights
NECK_HALF_WIDTH = 0.6  # half-width of the search band, in jaw widths
MAX_CHROMA_DIST = 3.0  # skin: chroma within this many standard deviations of the face's
MIN_LUMA = 0.35        # and at least this fraction of the face's brightness (necks sit in shadow)


def _chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(luma (H,W), chroma (H,W,2): Cb, Cr) of a float RGB image in [0, 1] (BT.601)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return y, np.stack([0.564 * (b - y), 0.713 * (r - y)], axis=-1)


def skin_model(rgb: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(chroma mean (2,), inverse covariance (2,2), median luma) of the skin under ``sample`` (H,W bool),
    robust to glasses, stubble and shadows (two passes, the second on the inliers of the first)."""
    y, c = _chroma(rgb)
    pix, luma = c[sample], y[sample]
    if len(pix) < 30:
        return None
    mean, cov = np.median(pix, axis=0), np.cov(pix.T) + 1e-6 * np.eye(2)
    for _ in range(2):
        d = pix - mean
        m2 = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        inl = m2 < 2.5 ** 2
        if inl.sum() < 30:
            break
        mean, cov = pix[inl].mean(0), np.cov(pix[inl].T) + 1e-6 * np.eye(2)
    return mean, np.linalg.inv(cov), float(np.median(luma))


def neck_from_skin(rgb: np.ndarray, matte: np.ndarray, points: np.ndarray, up: np.ndarray, side: np.ndarray,
                   face_h: float, jaw_w: float, face_polygon) -> np.ndarray:
    """Boolean (H,W) neck mask below the jaw line. ``rgb`` uint8 (H,W,3), ``matte`` bool, ``points`` the
    468 face-mesh points (pixels), ``up`` / ``side`` the face's unit axes, ``face_polygon(pts) -> mask``."""
    hw = matte.shape
    img = rgb.astype(np.float64) / 255.0
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]]
    pix = np.stack([xs + 0.5, ys + 0.5], axis=-1)
    chin = points[152, :2]
    rel = pix - chin
    u, s = rel @ up, rel @ side  # height above the chin, sideways
    # the jaw line as a function of the sideways coordinate; outside its span, "below" means below the ear
    jaw = (points[list(JAW_LINE), :2] - chin)
    js, ju = jaw @ side, jaw @ up
    order = np.argsort(js)
    jaw_u = np.interp(s, js[order], ju[order], left=ju[order][0], right=ju[order][-1])
    band = (u < jaw_u) & (u > -NECK_REACH * face_h) & (np.abs(s) < NECK_HALF_WIDTH * jaw_w) & matte
    # skin sample: the face between the eyes' level and the upper lip (cheeks and nose)
    face = face_polygon(points[list(JAW_LINE) + [NOSE_BRIDGE], :2])
    top, bottom = (points[NOSE_BRIDGE, :2] - chin) @ up, (points[UPPER_LIP, :2] - chin) @ up
    model = skin_model(img, face & (u < top) & (u > bottom) & matte)
    if model is None:
        return np.zeros(hw, dtype=bool)
    mean, icov, luma = model
    y, c = _chroma(img)
    d = c - mean
    skin = (np.einsum("hwi,ij,hwj->hw", d, icov, d) < MAX_CHROMA_DIST ** 2) & (y > MIN_LUMA * luma)
    cand = ndimage.binary_opening(band & skin, iterations=1)
    labels, n = ndimage.label(cand)
    if n == 0:
        return np.zeros(hw, dtype=bool)
    seam = band & (u > jaw_u - 0.06 * face_h)  # the strip just under the jaw line
    keep = np.unique(labels[seam & cand])
    neck = np.isin(labels, keep[keep > 0])
    neck = ndimage.binary_closing(neck, iterations=2) & band
    # fill holes, counting everything above the jaw as solid: a shadow under the chin is then enclosed
    return ndimage.binary_fill_holes(neck | (u >= jaw_u)) & band

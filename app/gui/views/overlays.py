"""What the views draw over the image: label and zone colours, needle bands, landmark names.

The geometry here is plain numpy in plane coordinates (see :mod:`app.gui.views.planes`), so it
is tested without a window; the VTK side only copies it into poly data.
"""

from __future__ import annotations

import numpy as np

from imaging.labels import Label

LABEL_COLORS: dict[int, tuple[float, float, float]] = {
    Label.SACRUM: (0.95, 0.72, 0.38),
    Label.LEFT_ILIUM: (0.36, 0.62, 1.0),
    Label.RIGHT_ILIUM: (0.30, 0.85, 0.72),
    Label.FORAMEN: (1.0, 0.9, 0.1),
    Label.CANAL: (0.75, 0.45, 1.0),
    Label.LESION: (1.0, 0.18, 0.18),
    Label.SI_JOINT: (0.65, 0.65, 0.65),
}

LABEL_NAMES: dict[int, str] = {
    Label.SACRUM: "sacrum",
    Label.LEFT_ILIUM: "left ilium",
    Label.RIGHT_ILIUM: "right ilium",
    Label.FORAMEN: "foramina",
    Label.CANAL: "canal",
    Label.LESION: "lesion",
    Label.SI_JOINT: "SI joint",
}

ZONE_COLORS: dict[int, tuple[float, float, float]] = {
    1: (0.30, 0.85, 0.35),
    2: (1.0, 0.80, 0.20),
    3: (0.95, 0.30, 0.65),
}

FILL_ALPHA = 0.40
OUTLINE_FILL_ALPHA = 0.12
ZONE_ALPHA = 0.28


def color_table(colors: dict[int, tuple[float, float, float]]) -> np.ndarray:
    """(256, 3) uint8 RGB per label value (black where no colour is given)."""
    rgb = np.zeros((256, 3), dtype=np.uint8)
    for value, col in colors.items():
        rgb[int(value)] = np.round(np.asarray(col) * 255).astype(np.uint8)
    return rgb


def label_rgba(
    labels_2d: np.ndarray,
    colors: dict[int, tuple[float, float, float]],
    *,
    shown: set[int],
    style: str = "fill",
    fill_alpha: float = FILL_ALPHA,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Colour a resliced label image.

    Parameters
    ----------
    labels_2d : (B, A) integer ndarray
        Label values on the view's pixel grid (rows along ``b``).
    colors : dict of int to rgb
        Colour per label value (0..1).
    shown : set of int
        Label values to draw.
    style : {"fill", "outline"}
        ``"fill"``: every labelled pixel at ``fill_alpha``; ``"outline"``: the label's border
        pixels opaque and its inside faint.
    out : (B, A, 4) uint8 ndarray, optional
        Buffer to write into.

    Returns
    -------
    (B, A, 4) uint8 ndarray, RGBA
    """
    lab = np.clip(labels_2d, 0, 255).astype(np.uint8)
    rgb = color_table(colors)
    on = np.zeros(256, dtype=bool)
    for value in shown:
        if 0 < int(value) < 256 and int(value) in colors:
            on[int(value)] = True
    if out is None:
        out = np.empty(lab.shape + (4,), dtype=np.uint8)
    out[..., :3] = rgb[lab]
    mask = on[lab]
    if style == "outline":
        edge = np.zeros_like(mask)
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        alpha = np.where(edge, 255, round(OUTLINE_FILL_ALPHA * 255)).astype(np.uint8)
    else:
        alpha = np.full(lab.shape, round(fill_alpha * 255), dtype=np.uint8)
    out[..., 3] = np.where(mask, alpha, 0)
    return out


def needle_band(
    a_ab: np.ndarray, b_ab: np.ndarray, diameter_mm: float, *, n_circle: int = 24
) -> np.ndarray:
    """Outline of a needle's projection on a plane: a band of its real width.

    Parameters
    ----------
    a_ab, b_ab : (2,) float ndarray, mm
        Projected entry and tip in plane coordinates.
    diameter_mm : float
        Outer diameter; the projection of a cylinder is a band this wide whatever its tilt.

    Returns
    -------
    (M, 2) float ndarray
        Polygon vertices (a rectangle, or a circle when the needle points at the viewer).
    """
    a_ab = np.asarray(a_ab, dtype=np.float64)
    b_ab = np.asarray(b_ab, dtype=np.float64)
    r = diameter_mm / 2.0
    d = b_ab - a_ab
    length = float(np.hypot(*d))
    if length < 1e-6:
        return circle(a_ab, r, n=n_circle)
    d /= length
    p = np.array([-d[1], d[0]]) * r
    return np.array([a_ab + p, b_ab + p, b_ab - p, a_ab - p])


def near_plane_interval(
    h_entry: float, h_target: float, half_width_mm: float
) -> tuple[float, float] | None:
    """Parameter range ``t`` in [0, 1] (entry -> tip) where the needle axis lies within
    ``half_width_mm`` of the plane, given the entry's and tip's signed heights above it."""
    dh = h_target - h_entry
    if abs(dh) < 1e-9:
        return (0.0, 1.0) if abs(h_entry) <= half_width_mm else None
    t0 = (-half_width_mm - h_entry) / dh
    t1 = (half_width_mm - h_entry) / dh
    lo, hi = max(0.0, min(t0, t1)), min(1.0, max(t0, t1))
    return (lo, hi) if hi > lo else None


def circle(center: np.ndarray, radius: float, *, n: int = 32) -> np.ndarray:
    """(n, 2) vertices of a circle in plane coordinates."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.asarray(center, dtype=np.float64)[:2] + radius * np.stack(
        [np.cos(t), np.sin(t)], axis=1
    )


def landmark_text(landmark_id: str) -> str:
    """Short on-screen name of a landmark id (``"foramen:S1:left"`` -> ``"S1 L"``)."""
    parts = [p for p in landmark_id.replace("_", " ").split(":") if p]
    if not parts:
        return landmark_id
    if parts[0] == "foramen" and len(parts) >= 3:
        side = {"left": "L", "right": "R"}.get(parts[2].lower(), parts[2])
        return f"{parts[1]} {side}"
    if len(parts) >= 2 and parts[0] in ("foramen",):
        return parts[1]
    return " ".join(parts)


def nice_length_mm(max_mm: float) -> float:
    """The largest 1-2-5 length (mm) not above ``max_mm`` (at least 1 mm)."""
    best = 1.0
    for decade in (1.0, 10.0, 100.0, 1000.0):
        for m in (1.0, 2.0, 5.0):
            if m * decade <= max_mm:
                best = m * decade
    return best

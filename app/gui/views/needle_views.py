"""Needle views: a reslice along the focused needle and a bull's-eye view down its axis.

* **Along the needle**: the plane containing the needle (screen right runs from the skin entry
  to the tip; screen up is the patient axis least aligned with the needle), so the whole path
  and what it passes are seen in one image.
* **Bull's-eye**: the plane perpendicular to the needle through its tip, seen from the entry
  looking down the needle, as on a C-arm bull's-eye view; the needle shows as a disc of its
  real diameter at the centre.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QWidget

from app.gui.views.planes import PlaneAxes, needle_axes
from app.gui.views.slice_view import SliceView

_PLACEHOLDER = PlaneAxes(u=np.array([1.0, 0.0, 0.0]), v=np.array([0.0, 0.0, 1.0]))


class NeedleView(SliceView):
    """A slice view whose plane follows one needle.

    Parameters
    ----------
    kind : {"along", "bullseye"}
    """

    def __init__(self, kind: str, parent: QWidget | None = None) -> None:
        if kind not in ("along", "bullseye"):
            raise ValueError(f"needle view kind must be 'along' or 'bullseye', got {kind!r}")
        self.needle: tuple[np.ndarray, np.ndarray] | None = None
        super().__init__(kind, _PLACEHOLDER, parent)
        self.kind = kind
        self.title = "Along needle" if kind == "along" else "Bull's-eye"
        self._update_letters()

    def follow(self, entry: np.ndarray, target: np.ndarray, *, refit: bool = True) -> None:
        """Put the plane on the needle from ``entry`` to ``target`` (LPS mm).

        With ``refit=False`` (live drags) the zoom and pan stay as they are.
        """
        entry = np.asarray(entry, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        self.needle = (entry.copy(), target.copy())
        if self._drag is not None and self._drag.kind == "needle":
            return  # the needle is being dragged in this very view: keep its plane still
        along, bullseye = needle_axes(entry, target)
        axes = along if self.kind == "along" else bullseye
        if self.volume is None:
            self.axes = axes
            self._update_letters()
            return
        center = (entry + target) / 2 if self.kind == "along" else target
        self.set_axes(axes, center, depth_mm=0.0)
        self.crosshair_lps = target.copy()
        self._update_crosshair()
        if refit or not self._user_camera:
            self.reset_camera()
        else:
            self._update_screen_overlays()

    def reset_camera(self) -> None:
        """Fit the grid; the along-needle view fits the needle itself."""
        super().reset_camera()
        if self.kind == "along" and self.needle is not None and self.grid is not None:
            self._fit_needle(*self.needle)

    def _fit_needle(self, entry: np.ndarray, target: np.ndarray) -> None:
        length = float(np.linalg.norm(target - entry))
        cam = self.renderer.GetActiveCamera()
        cam.SetFocalPoint(0.0, 0.0, 0.0)
        cam.SetPosition(0.0, 0.0, 1000.0)
        w, h = max(self.width(), 1), max(self.height(), 1)
        cam.SetParallelScale(max(0.75 * length * h / w, 40.0))
        self._user_camera = False
        self._update_screen_overlays()

    def set_crosshair(self, lps: np.ndarray) -> None:
        """The needle views keep their plane on the needle; only the marker moves."""
        self.crosshair_lps = np.asarray(lps, dtype=np.float64).copy()
        self._update_crosshair()

    def step_slice(self, steps: int) -> None:
        """Move the plane parallel to itself (the bull's-eye walks along the needle)."""
        if self.volume is None:
            return
        self.depth_mm += steps * self.slice_step_mm() * float(self.slice_direction() @ self.axes.n)
        self._update_matrices()
        self._refresh_glyphs()
        self.request_render()

"""Pictures for the plan report, drawn without a screen.

* Axial and sagittal slices through the (first) needle's tip (matplotlib, Agg): the study
  resampled on the LPS plane at 0.5 mm, CT bone window, anatomy and lesion outlines, every
  chosen needle drawn as a band of its real outer diameter (solid within 3 mm of the plane)
  and numbered at its tip, orientation letters and a 10 mm scale bar.
* A 3D view and the bull's-eye view (offscreen VTK): surfaces of the sacrum, ilia,
  foramina, canal and lesion with every needle as a cylinder of its real diameter; the
  bull's-eye camera looks down needle 1 from the skin, as the C-arm sees it.
* The clearance of each needle's surface along its depth (matplotlib).

Needle colours: :data:`NEEDLE_COLOURS` in order (needle 1 green, needle 2 orange, ...).

Offscreen VTK: with no X display (no ``DISPLAY``), the EGL render window is chosen before VTK
is imported, so the report renders on a headless machine (Mesa's EGL software path is
enough); with a display (or under Xvfb) VTK's default window is used, offscreen.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from imaging.labels import Label
from imaging.volume import Volume
from planning.export import ClearanceProfile, PlanStudy
from planning.plan import Plan, Trajectory

#: Outline colours (RGB 0..1) of the label codes in the pictures.
LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    Label.SACRUM: (0.95, 0.85, 0.45),
    Label.LEFT_ILIUM: (0.80, 0.65, 0.45),
    Label.RIGHT_ILIUM: (0.80, 0.65, 0.45),
    Label.FORAMEN: (0.20, 0.80, 1.00),
    Label.CANAL: (0.85, 0.35, 1.00),
    Label.LESION: (1.00, 0.20, 0.20),
}
LABEL_NAMES = {
    Label.SACRUM: "sacrum",
    Label.LEFT_ILIUM: "ilium",
    Label.FORAMEN: "foramina",
    Label.CANAL: "canal",
    Label.LESION: "lesion",
}
NEEDLE_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.15, 1.0, 0.3),
    (1.0, 0.6, 0.0),
    (0.35, 0.55, 1.0),
    (1.0, 1.0, 1.0),
)
NEEDLE_COLOUR = NEEDLE_COLOURS[0]


def needle_colour(index: int) -> tuple[float, float, float]:
    """RGB (0..1) of needle ``index`` (0 = needle 1) in every picture."""
    return NEEDLE_COLOURS[index % len(NEEDLE_COLOURS)]


def _as_list(
    trajectories: Trajectory | Sequence[Trajectory] | None, od_mm: float | Sequence[float]
) -> list[tuple[Trajectory, float]]:
    """Needles as ``(trajectory, outer diameter mm)`` pairs."""
    if trajectories is None:
        return []
    items = [trajectories] if isinstance(trajectories, Trajectory) else list(trajectories)
    ods = [float(od_mm)] * len(items) if isinstance(od_mm, int | float) else list(od_mm)
    if len(ods) != len(items):
        raise ValueError("one outer diameter per needle is needed")
    return list(zip(items, ods, strict=True))


SLICE_STEP_MM = 0.5
IN_PLANE_MM = 3.0


# -- 2D slices -------------------------------------------------------------------------------
def _plane_axes(plane: str) -> tuple[np.ndarray, np.ndarray, tuple[str, str, str, str]]:
    """Image-right and image-down unit vectors (LPS) and the letters (left, right, top, bottom).

    Axial: radiological view from the feet (patient's right on the image left, anterior up).
    Sagittal: patient's anterior on the image left, head up.
    """
    if plane == "axial":
        return np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), ("R", "L", "A", "P")
    if plane == "sagittal":
        return np.array([0, 1.0, 0]), np.array([0, 0, -1.0]), ("A", "P", "H", "F")
    raise ValueError(f"unknown plane {plane!r}")


def _resample(volume: Volume, world: np.ndarray, *, order: int, cval: float) -> np.ndarray:
    from scipy import ndimage as ndi

    kji = volume.world_to_index(world.reshape(-1, 3))[:, ::-1].T
    out = ndi.map_coordinates(
        np.asarray(volume.array, dtype=np.float32 if order else volume.array.dtype),
        kji,
        order=order,
        mode="constant",
        cval=cval,
    )
    return out.reshape(world.shape[:-1])


def _window(image: Volume) -> tuple[float, float]:
    if image.modality.upper() == "CT":
        return -500.0, 1500.0  # bone window W2000 / L500
    lo, hi = np.percentile(np.asarray(image.array)[::2, ::2, ::2], [1, 99.5])
    return float(lo), float(hi)


def slice_png(
    study: PlanStudy,
    trajectory: Trajectory | Sequence[Trajectory] | None,
    *,
    plane: str,
    needle_od_mm: float | Sequence[float] = 2.4,
    centre_lps: np.ndarray | None = None,
    size_px: int = 700,
) -> bytes:
    """One slice through the first needle's tip (or ``centre_lps``) as a PNG.

    Parameters
    ----------
    study : PlanStudy
    trajectory : Trajectory, sequence of Trajectory, or None
        The needle(s) to draw, numbered 1, 2... at their tips when there are several.
    plane : {"axial", "sagittal"}
    needle_od_mm : float or sequence of float
        Outer diameter of the needle band(s), mm (one for all, or one per needle).
    centre_lps : (3,) float, mm, LPS, optional
        Point the slice passes through (default: the first needle's tip, else the lesion
        centre).
    size_px : int
        Width and height of the picture.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    right, down, letters = _plane_axes(plane)
    normal = np.cross(right, down)
    needles = _as_list(trajectory, needle_od_mm)
    pts: list[np.ndarray] = []
    for t, _od in needles:
        pts += [np.asarray(t.entry_lps), np.asarray(t.target_lps)]
    if centre_lps is None:
        centre_lps = (
            pts[1]
            if pts
            else _mask_centre(study)
            or study.image.index_to_world((np.asarray(study.image.size) - 1) / 2.0)
        )
    centre = np.asarray(centre_lps, dtype=float)
    # field of view: the needle and 40 mm around the centre, square
    extent = [40.0]
    for p in pts:
        d = p - centre
        extent += [abs(d @ right) + 15.0, abs(d @ down) + 15.0]
    half = min(max(extent), 160.0)
    ticks = np.arange(-half, half + 1e-6, SLICE_STEP_MM)
    uu, vv = np.meshgrid(ticks, ticks)
    world = centre + uu[..., None] * right + vv[..., None] * down
    image = _resample(study.image, world, order=1, cval=float(np.min(study.image.array)))
    labels = _resample(study.labels, world, order=0, cval=0)
    lo, hi = _window(study.image)
    fig = plt.figure(figsize=(size_px / 100, size_px / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, extent=(-half, half, half, -half))
    for code, colour in LABEL_COLOURS.items():
        m = labels == code
        if m.any():
            ax.contour(uu, vv, m.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
    for n, (t, od) in enumerate(needles):
        entry, tip = np.asarray(t.entry_lps) - centre, np.asarray(t.target_lps) - centre
        _draw_needle(ax, entry, tip, right, down, normal, od, colour=needle_colour(n))
        if len(needles) > 1:
            ax.text(
                float(tip @ right) + 2.5,
                float(tip @ down) - 2.5,
                str(n + 1),
                color=needle_colour(n),
                fontsize=13,
                fontweight="bold",
            )
    kw: dict[str, Any] = {"color": "white", "fontsize": 16, "fontweight": "bold"}
    ax.text(-half + 3, 0, letters[0], va="center", ha="left", **kw)
    ax.text(half - 3, 0, letters[1], va="center", ha="right", **kw)
    ax.text(0, -half + 3, letters[2], va="top", ha="center", **kw)
    ax.text(0, half - 3, letters[3], va="bottom", ha="center", **kw)
    x0, y0 = half - 20, half - 8
    ax.plot([x0, x0 + 10], [y0, y0], color="white", linewidth=3)
    ax.text(x0 + 5, y0 - 2, "10 mm", color="white", fontsize=10, ha="center", va="bottom")
    title = f"{plane} through ({', '.join(f'{v:.1f}' for v in centre)}) mm LPS"
    ax.text(-half + 3, -half + 3, title, color="white", fontsize=9, va="top", ha="left")
    ax.set_xlim(-half, half)
    ax.set_ylim(half, -half)
    ax.axis("off")
    return _png(fig)


def _mask_centre(study: PlanStudy) -> np.ndarray | None:
    if study.lesion_mask is None or not np.any(study.lesion_mask.array):
        return None
    kji = np.argwhere(study.lesion_mask.array > 0).mean(axis=0)
    return study.lesion_mask.index_to_world(kji[::-1])


def _draw_needle(
    ax: Any,
    entry: np.ndarray,
    tip: np.ndarray,
    right: np.ndarray,
    down: np.ndarray,
    normal: np.ndarray,
    od_mm: float,
    *,
    colour: tuple[float, float, float] = NEEDLE_COLOUR,
) -> None:
    """The needle's projection as a band of its real width; solid where near the plane."""
    n = 200
    t = np.linspace(0.0, 1.0, n)
    path = entry + np.outer(t, tip - entry)
    u, v, w = path @ right, path @ down, path @ normal
    axis = np.array([u[-1] - u[0], v[-1] - v[0]])
    length = float(np.linalg.norm(axis))
    if length < 1e-6:  # the needle runs along the plane normal: a dot of its diameter
        ax.add_patch(
            __import__("matplotlib").patches.Circle((u[-1], v[-1]), od_mm / 2, color=colour)
        )
        return
    side = np.array([-axis[1], axis[0]]) / length * od_mm / 2
    near = np.abs(w) <= IN_PLANE_MM
    for mask, alpha in ((~near, 0.35), (near, 0.95)):
        idx = np.flatnonzero(mask)
        if idx.size < 2:
            continue
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1):
            if run.size < 2:
                continue
            a, b = run[0], run[-1]
            quad = np.array(
                [
                    [u[a] + side[0], v[a] + side[1]],
                    [u[b] + side[0], v[b] + side[1]],
                    [u[b] - side[0], v[b] - side[1]],
                    [u[a] - side[0], v[a] - side[1]],
                ]
            )
            ax.fill(quad[:, 0], quad[:, 1], color=colour, alpha=alpha, linewidth=0)
    ax.plot([u[-1]], [v[-1]], marker="o", markersize=4, color="yellow")


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# -- clearance plot --------------------------------------------------------------------------
def clearance_plot_png(
    profile: ClearanceProfile | Sequence[tuple[str, ClearanceProfile]],
    *,
    margin_mm: float,
    title: str = "",
) -> bytes:
    """Clearance of the needle surface to the foramina and the canal along the depth.

    Parameters
    ----------
    profile : ClearanceProfile or sequence of (str, ClearanceProfile)
        One needle, or several named ones (each drawn in its needle colour: foramen solid,
        canal dashed; depth from each needle's own skin entry).
    margin_mm : float
        The foramen and canal margin drawn as a red line, mm.
    title : str
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    named = [("", profile)] if isinstance(profile, ClearanceProfile) else list(profile)
    several = len(named) > 1
    fig, ax = plt.subplots(figsize=(7.0, 3.2), dpi=100)
    first = named[0][1]
    if first.in_bone.any():
        ax.fill_between(
            first.depth_mm,
            0,
            1,
            where=first.in_bone,
            transform=ax.get_xaxis_transform(),
            color="0.85",
            label=f"in bone ({named[0][0]})" if several else "in bone (sacrum)",
        )
    top: list[np.ndarray] = []
    for n, (name, prof) in enumerate(named):
        d = prof.depth_mm
        who = f"{name}: " if several else ""
        foramen_colour = needle_colour(n) if several else "tab:blue"
        canal_colour = needle_colour(n) if several else "tab:purple"
        if prof.foramina_mm is not None:
            ax.plot(d, prof.foramina_mm, color=foramen_colour, label=f"{who}nearest foramen")
            top.append(prof.foramina_mm)
        if prof.canal_mm is not None:
            ax.plot(
                d,
                prof.canal_mm,
                color=canal_colour,
                linestyle="--" if several else "-",
                label=f"{who}spinal canal",
            )
            top.append(prof.canal_mm)
    ax.axhline(margin_mm, color="tab:red", linestyle="--", linewidth=1, label="margin")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ymax = float(min(max((np.max(v) for v in top), default=30.0), 40.0)) + 2.0
    ax.set_ylim(min(-2.0, *(float(np.min(v)) - 1 for v in top)), max(ymax, margin_mm + 5))
    longest = max((float(p.depth_mm[-1]) for _, p in named if p.depth_mm.size), default=1.0)
    ax.set_xlim(0, longest)
    ax.set_xlabel("depth from the skin entry along the needle (mm)")
    ax.set_ylabel("clearance of needle surface (mm)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=7 if several else 8, ncol=3 if several else 2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# -- 3D and bull's-eye (offscreen VTK) ---------------------------------------------------------
def _prepare_vtk_environment() -> None:
    """Choose EGL when there is no X display (must run before VTK rendering is imported)."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _surface(mask: np.ndarray, volume: Volume) -> Any:
    """A smoothed surface of ``mask`` (array on ``volume``'s grid) in LPS mm, or None."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D, vtkWindowedSincPolyDataFilter
    from vtkmodules.vtkFiltersGeneral import vtkTransformFilter

    kji = np.argwhere(mask)
    if kji.size == 0:
        return None
    lo = np.maximum(kji.min(axis=0) - 2, 0)
    hi = np.minimum(kji.max(axis=0) + 3, mask.shape)
    sub = np.ascontiguousarray(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    img = vtkImageData()
    img.SetDimensions(sub.shape[2], sub.shape[1], sub.shape[0])
    img.SetOrigin(float(lo[2]), float(lo[1]), float(lo[0]))
    img.GetPointData().SetScalars(numpy_to_vtk(sub.ravel(), deep=True))
    fe = vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 0.5)
    smooth = vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(fe.GetOutputPort())
    smooth.SetNumberOfIterations(15)
    smooth.SetPassBand(0.1)
    smooth.NormalizeCoordinatesOn()
    transform = vtkTransform()
    transform.SetMatrix([float(v) for v in volume.affine.reshape(-1)])
    tf = vtkTransformFilter()
    tf.SetInputConnection(smooth.GetOutputPort())
    tf.SetTransform(transform)
    tf.Update()
    return tf.GetOutput()


def _needle_actor(
    entry: np.ndarray,
    tip: np.ndarray,
    od_mm: float,
    colour: tuple[float, float, float] = NEEDLE_COLOUR,
) -> Any:
    from vtkmodules.vtkFiltersCore import vtkTubeFilter
    from vtkmodules.vtkFiltersSources import vtkLineSource
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

    line = vtkLineSource()
    line.SetPoint1(*map(float, entry))
    line.SetPoint2(*map(float, tip))
    tube = vtkTubeFilter()
    tube.SetInputConnection(line.GetOutputPort())
    tube.SetRadius(od_mm / 2.0)
    tube.SetNumberOfSides(24)
    tube.CappingOn()
    mapper = vtkPolyDataMapper()
    mapper.SetInputConnection(tube.GetOutputPort())
    actor = vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*colour)
    return actor


def scene_pngs(
    study: PlanStudy,
    trajectory: Trajectory | Sequence[Trajectory] | None,
    *,
    needle_od_mm: float | Sequence[float] = 2.4,
    size_px: int = 700,
) -> dict[str, bytes]:
    """The 3D view and, with a needle, the bull's-eye view, as PNGs (offscreen VTK).

    Every needle is drawn (in :func:`needle_colour`); the bull's-eye view looks down the
    first one.

    Returns
    -------
    dict
        ``{"view3d": png, "bullseye": png}`` (no ``"bullseye"`` without a trajectory).
    """
    _prepare_vtk_environment()
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL window)
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import (
        vtkActor,
        vtkPolyDataMapper,
        vtkRenderer,
        vtkRenderWindow,
        vtkWindowToImageFilter,
    )

    labels = np.asarray(study.labels.array)
    parts = [
        ((labels == Label.SACRUM) | (labels == Label.LESION), Label.SACRUM, 0.35),
        ((labels == Label.LEFT_ILIUM) | (labels == Label.RIGHT_ILIUM), Label.LEFT_ILIUM, 0.25),
        (labels == Label.FORAMEN, Label.FORAMEN, 0.9),
        (labels == Label.CANAL, Label.CANAL, 0.6),
        (labels == Label.LESION, Label.LESION, 1.0),
    ]
    actors = []
    for mask, code, opacity in parts:
        poly = _surface(mask, study.labels)
        if poly is None:
            continue
        mapper = vtkPolyDataMapper()
        mapper.SetInputData(poly)
        mapper.ScalarVisibilityOff()
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*LABEL_COLOURS[code])
        actor.GetProperty().SetOpacity(opacity)
        actors.append(actor)
    needles = _as_list(trajectory, needle_od_mm)
    for n, (t, od) in enumerate(needles):
        actors.append(
            _needle_actor(
                np.asarray(t.entry_lps, dtype=float),
                np.asarray(t.target_lps, dtype=float),
                od,
                needle_colour(n),
            )
        )
    if needles:
        entry = np.asarray(needles[0][0].entry_lps, dtype=float)
        tip = np.asarray(needles[0][0].target_lps, dtype=float)
    out: dict[str, bytes] = {}
    views = ["view3d"] + (["bullseye"] if needles else [])
    for view in views:
        window = vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.SetSize(size_px, size_px)
        renderer = vtkRenderer()
        renderer.SetBackground(0.08, 0.08, 0.1)
        window.AddRenderer(renderer)
        for actor in actors:
            renderer.AddActor(actor)
        camera = renderer.GetActiveCamera()
        if view == "view3d":
            # from behind (prone patient seen by the operator) and a little from the left
            focus = tip if needles else _scene_centre(study)
            camera.SetFocalPoint(*focus)
            camera.SetPosition(*(focus + np.array([250.0, 420.0, 120.0])))
            camera.SetViewUp(0.0, 0.0, 1.0)
            renderer.ResetCamera()
            camera.Zoom(1.3)
        else:
            direction = (tip - entry) / np.linalg.norm(tip - entry)
            camera.SetFocalPoint(*tip)
            camera.SetPosition(*(entry - 150.0 * direction))
            up = np.array([0.0, 0.0, 1.0])
            if abs(direction @ up) > 0.95:
                up = np.array([0.0, -1.0, 0.0])
            camera.SetViewUp(*up)
            camera.SetViewAngle(20.0)
            renderer.ResetCameraClippingRange()
        window.Render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.ReadFrontBufferOff()
        grab.Update()
        writer = vtkPNGWriter()
        writer.WriteToMemoryOn()
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()
        out[view] = bytes(memoryview(writer.GetResult()))
        window.Finalize()
    return out


def _scene_centre(study: PlanStudy) -> np.ndarray:
    centre = _mask_centre(study)
    if centre is not None:
        return centre
    return study.image.index_to_world((np.asarray(study.image.size) - 1) / 2.0)


# -- all of them -------------------------------------------------------------------------------
def render_report_images(plan: Plan, study: PlanStudy, *, size_px: int = 700) -> dict[str, bytes]:
    """Every picture of the report as PNG bytes, with every chosen needle drawn.

    Keys: ``"axial"``, ``"sagittal"``, ``"view3d"``, ``"bullseye"`` (with a trajectory: down
    the first needle) and ``"clearance"`` (with a trajectory and the anatomy: one curve pair
    per needle).
    """
    from planning.export import clearance_profile

    chosen = list(plan.trajectories)
    ods = [needle_od_mm(plan, t) for t in chosen]
    out = {
        "axial": slice_png(study, chosen, plane="axial", needle_od_mm=ods, size_px=size_px),
        "sagittal": slice_png(study, chosen, plane="sagittal", needle_od_mm=ods, size_px=size_px),
    }
    out.update(scene_pngs(study, chosen, needle_od_mm=ods, size_px=size_px))
    profiles = []
    for n, (t, od) in enumerate(zip(chosen, ods, strict=True)):
        profile = clearance_profile(study, t.entry_lps, t.target_lps, needle_od_mm=od)
        if profile is not None:
            profiles.append((f"needle {n + 1}", profile))
    if profiles:
        what = (
            f"{_approach_label(chosen[0].approach)}: clearance of the needle surface"
            if len(chosen) == 1
            else f"{len(chosen)} needles: clearance of each needle's surface"
        )
        out["clearance"] = clearance_plot_png(
            profiles if len(profiles) > 1 else profiles[0][1],
            margin_mm=plan.margins.foramen_mm,
            title=f"{what} (beyond 40 mm: at least the value shown)",
        )
    return out


def _approach_label(key: str | None) -> str:
    from imaging.errors import SacroplanError
    from planning.approaches import approach_registry

    if key is None:
        return "Needle"
    try:
        return approach_registry()[key].label
    except (KeyError, SacroplanError):
        return key


def needle_od_mm(plan: Plan, trajectory: Trajectory | None) -> float:
    """Outer diameter (mm) of a chosen needle: catalogue, else its candidate, else 2.4."""
    from imaging.errors import SacroplanError
    from planning.needles import get_needle

    if trajectory is None:
        return 2.4
    try:
        return float(get_needle(trajectory.needle).outer_diameter_mm)
    except (SacroplanError, AttributeError):
        for c in plan.candidates:
            if c.needle == trajectory.needle:
                return c.needle_od_mm
        return 2.4

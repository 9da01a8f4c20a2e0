"""Simulated fluoroscopy for the plan report: DRRs with the plan projected on top, headless.

For the plan's study (a CT), digitally reconstructed radiographs (:mod:`imaging.drr`) of the
straight AP and the lateral view of :func:`planning.fluoro.plan_views` (isocentre: the
lesion centre) and of every chosen needle's bull's-eye view (isocentre: its tip), each
drawn with matplotlib (Agg) into a PNG:

* the radiograph as on the fluoroscopy monitor (transmitted intensity, bone dark), one PNG
  pixel per detector pixel;
* every needle as a band of its real outer diameter magnified at its depth (a disc where it
  projects end-on, as in its own bull's-eye view), in the report's needle colours
  (:func:`app.report_images.needle_colour`: needle 1 green, needle 2 orange), its tip as a
  dot of that colour;
* the foramina as dashed yellow rings and the lesion's projected outline in red, as in the
  workstation's fluoroscopy view;
* orientation letters at the edges (the patient direction closest to each image axis), the
  view's name and a 10 mm bar at the isocentre's magnification.

The C-arm pose is the workstation's default cone beam (:data:`imaging.drr.DEFAULT_SID_MM`,
:data:`imaging.drr.DEFAULT_SOD_MM`, a 512 x 512 detector of 0.6 mm). The CT is averaged in
blocks down to voxels of at least :data:`REPORT_VOXEL_MM` (the workstation uses the full
resolution) so the report stays quick on a fine CT; :attr:`FluoroFigures.about` says what was
used. An MR study, or a study that cannot be read, gives no pictures and a one-line reason.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imaging.drr import AttenuationVolume, CArmGeometry, Drr, prepare_volume, render_drr
from imaging.errors import SacroplanError
from planning.export import PlanStudy
from planning.fluoro import FluoroView, overlays, plan_views
from planning.plan import Plan, Trajectory

#: Smallest voxel edge (mm) of the CT the report's DRRs are computed from (block averages).
REPORT_VOXEL_MM = 1.25
#: Key prefix of the DRR pictures among the report's images.
FLUORO_PREFIX = "drr_"
FORAMEN_COLOUR = (1.0, 0.86, 0.16)
LESION_COLOUR = (1.0, 0.27, 0.27)
_COLOUR_NAMES = ("green", "orange", "blue", "white")
_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # negative and positive LPS x, y, z
_STANDARD = (("ap", (0.0, 1.0, 0.0)), ("lateral", (1.0, 0.0, 0.0)))


@dataclass
class FluoroFigures:
    """The report's simulated fluoroscopy pictures.

    Attributes
    ----------
    images : dict of str to bytes
        PNG by key (``"drr_ap"``, ``"drr_lateral"``, ``"drr_bulls_eye_1"``, ...), in the
        order to show them.
    captions : dict of str to str
        Caption of each picture: the view and its C-arm angles in words.
    geometries : dict of str to CArmGeometry
        The pose of each picture (one PNG pixel per detector pixel).
    about : str
        How the pictures were made (resolution, C-arm distances, detector).
    missing : str or None
        Why there are no pictures (one sentence), or None.
    """

    images: dict[str, bytes] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    geometries: dict[str, CArmGeometry] = field(default_factory=dict)
    about: str = ""
    missing: str | None = None


def report_downsample(spacing_mm: Sequence[float]) -> int:
    """Block size that brings the smallest voxel edge to at least about :data:`REPORT_VOXEL_MM`.

    Parameters
    ----------
    spacing_mm : (3,) float
        Voxel size of the CT, mm.

    Returns
    -------
    int
        1 (full resolution) to 4.
    """
    finest = float(np.min(np.asarray(spacing_mm, dtype=float)))
    return int(np.clip(int(REPORT_VOXEL_MM / max(finest, 1e-3) + 0.5), 1, 4))


def _isocentre(
    study: PlanStudy, needles: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, str]:
    """Isocentre of the standard views (LPS mm) and what it is, in words."""
    mask = study.lesion_mask
    if mask is not None and np.any(mask.array):
        kji = np.argwhere(np.asarray(mask.array) > 0).mean(axis=0)
        return mask.index_to_world(kji[::-1]), "the lesion centre"
    if needles:
        return needles[0][1], "the tip of needle 1"
    anatomy = study.case.anatomy
    if anatomy is not None:
        return np.asarray(anatomy.frame.origin, dtype=float), "the sacral frame's origin"
    image = study.image
    centre = (np.asarray(image.array.shape[::-1], dtype=float) - 1) / 2.0
    return image.index_to_world(centre), "the centre of the study"


def _views(
    study: PlanStudy, needles: list[tuple[np.ndarray, np.ndarray]], iso: np.ndarray
) -> dict[str, FluoroView]:
    """AP, lateral and each needle's bull's-eye view (from the anatomy when it was found)."""
    from planning.carm import bulls_eye_view, view_for_detector_direction

    anatomy = study.case.anatomy
    if anatomy is not None:
        try:
            views = plan_views(anatomy, isocenter_lps=iso, needles=needles)
        except SacroplanError:
            views = {}
        wanted = ["ap", "lateral"] + [f"bulls_eye_{n}" for n in range(1, len(needles) + 1)]
        if all(k in views for k in wanted):
            return {k: views[k] for k in wanted}
    out: dict[str, FluoroView] = {}
    for name, d in _STANDARD:  # without the anatomy: the table frame's AP and left lateral
        carm = view_for_detector_direction(np.array(d))
        out[name] = FluoroView(name, carm, CArmGeometry(iso, carm.detector_direction_lps))
    for n, (entry, tip) in enumerate(needles, start=1):
        carm = bulls_eye_view(entry, tip)
        out[f"bulls_eye_{n}"] = FluoroView(
            f"bulls_eye_{n}", carm, CArmGeometry(tip, carm.detector_direction_lps)
        )
    return out


def _caption(name: str, view: FluoroView, n_needles: int) -> str:
    text = view.carm.text
    if name == "ap":
        return f"AP. {text}"
    if name == "lateral":
        return text if text.lower().startswith("lateral") else f"Lateral. {text}"
    n = int(name.rsplit("_", 1)[1])
    if n_needles == 1:
        return f"Bull's-eye view of the needle (green dot: the needle end-on). {text}"
    colour = _COLOUR_NAMES[(n - 1) % len(_COLOUR_NAMES)]
    return f"Bull's-eye view of needle {n} ({colour}, seen end-on). {text}"


def _title(name: str) -> str:
    if name == "ap":
        return "AP"
    if name == "lateral":
        return "Lateral"
    return f"Bull's-eye, needle {name.rsplit('_', 1)[1]}"


def _letter(direction: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(direction)))
    return _LETTERS[axis][int(direction[axis] > 0)]


def drr_png(
    drr: Drr,
    *,
    title: str = "",
    needles: Sequence[tuple[Trajectory, float]] = (),
    projected: dict[str, np.ndarray] | None = None,
) -> bytes:
    """One radiograph with the plan drawn on top, as a PNG of the detector's size.

    Parameters
    ----------
    drr : Drr
        The radiograph; its geometry projects the plan (pixel ``(col, row)`` of the
        detector is pixel ``(col, row)`` of the PNG).
    title : str
        Name of the view, written in the top left corner.
    needles : sequence of (Trajectory, float)
        The needles and their outer diameters, mm, in order (needle 1 first).
    projected : dict of str to (N, 2) ndarray, optional
        Foramen rings and the lesion outline in pixel coordinates, from
        :func:`planning.fluoro.overlays` (``"foramen ..."``, ``"lesion"``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib.patches import Circle, Polygon

    from app.report_images import needle_colour

    g = drr.geometry
    rows, cols = g.detector_shape
    fig = plt.figure(figsize=(cols / 100, rows / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    outline = [patheffects.withStroke(linewidth=1.5, foreground="black")]
    ax.imshow(
        drr.display_uint8(),
        cmap="gray",
        vmin=0,
        vmax=255,
        interpolation="nearest",
        extent=(-0.5, cols - 0.5, rows - 0.5, -0.5),
    )
    for key, uv in (projected or {}).items():
        if not np.all(np.isfinite(uv)) or len(uv) < 3:
            continue
        if key.startswith("foramen"):
            ax.add_patch(
                Polygon(uv, closed=True, fill=False, ec=FORAMEN_COLOUR, lw=1.0, ls=(0, (4, 3)))
            )
        elif key == "lesion":
            ax.add_patch(Polygon(uv, closed=True, fc=(*LESION_COLOUR, 0.15), ec="none"))
            ax.add_patch(Polygon(uv, closed=True, fill=False, ec=LESION_COLOUR, lw=1.6))
    p = g.projection_matrix()
    pitch = min(g.pixel_mm)
    tips = []
    for n in reversed(range(len(needles))):  # needle 1 last: on top
        t, od = needles[n]
        ends = np.array([t.entry_lps, t.target_lps], dtype=float)
        uv = g.project_points(ends)
        if not np.all(np.isfinite(uv)):
            continue
        depth = (np.hstack([ends, np.ones((2, 1))]) @ p.T)[:, 2]
        half = od * g.sid_mm / np.maximum(depth, 1e-6) / pitch / 2.0  # px, at entry and tip
        colour = needle_colour(n)
        axis = uv[1] - uv[0]
        length = float(np.linalg.norm(axis))
        if length > 1.0:
            side = np.array([-axis[1], axis[0]]) / length
            band = np.array(
                [
                    uv[0] + half[0] * side,
                    uv[1] + half[1] * side,
                    uv[1] - half[1] * side,
                    uv[0] - half[0] * side,
                ]
            )
            ax.add_patch(Polygon(band, closed=True, fc=(*colour, 0.85), ec="black", lw=0.4))
        else:  # end-on: a disc of the needle's projected diameter, ringed to be found
            ax.add_patch(Circle(uv[1], max(half.max(), 2.5), fc=colour, ec="black", lw=0.6))
            ax.add_patch(Circle(uv[1], max(half.max(), 2.5) + 7.0, fill=False, ec=colour, lw=1.5))
        tips.append((uv[1], colour, n))
    for uv, colour, n in tips:
        ax.add_patch(Circle(uv, 3.0, fc=colour, ec="black", lw=0.6))
        if len(needles) > 1:
            ax.text(
                uv[0] + 7,
                uv[1] - 7,
                str(n + 1),
                color=colour,
                fontsize=12,
                fontweight="bold",
                path_effects=outline,
            )
    kw: dict[str, Any] = {
        "color": "white",
        "fontsize": 13,
        "fontweight": "bold",
        "bbox": {"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 1.5},
    }
    right, up = g.right_lps, g.up_lps
    ax.text(6, rows / 2 + 20, _letter(-right), va="center", ha="left", **kw)
    ax.text(cols - 7, rows / 2 + 20, _letter(right), va="center", ha="right", **kw)
    ax.text(cols / 2, 6, _letter(up), va="top", ha="center", **kw)
    ax.text(cols / 2, rows - 7, _letter(-up), va="bottom", ha="center", **kw)
    if title:
        ax.text(
            8,
            8,
            title,
            color="white",
            fontsize=11,
            va="top",
            ha="left",
            bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 2},
        )
    bar = 10.0 * g.magnification / g.pixel_mm[1]
    x0, y0 = cols - 40 - bar, rows - 22
    ax.plot([x0, x0 + bar], [y0, y0], color="black", linewidth=5)
    ax.plot([x0, x0 + bar], [y0, y0], color="white", linewidth=3)
    ax.text(
        x0 + bar / 2,
        y0 - 4,
        "10 mm",
        color="white",
        fontsize=9,
        ha="center",
        va="bottom",
        bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 1},
    )
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def render_fluoro_figures(plan: Plan, study: PlanStudy) -> FluoroFigures:
    """The AP, lateral and bull's-eye radiographs of the plan's study with the plan drawn on top.

    Parameters
    ----------
    plan : Plan
        Its chosen needles (all of a multi-needle plan) are drawn and get a bull's-eye view.
    study : PlanStudy
        The re-opened study (:func:`planning.export.open_plan_study`) or the workstation's.

    Returns
    -------
    FluoroFigures
        With ``missing`` set (and no pictures) when the study is not a CT.
    """
    from app.report_images import needle_od_mm

    image = study.image
    if image.modality.upper() not in ("CT", "OT"):
        return FluoroFigures(
            missing=f"the study is {image.modality or 'not a CT'}; a simulated radiograph needs "
            "the patient's CT (Hounsfield units)."
        )
    chosen = list(plan.trajectories)
    needles = [(t, needle_od_mm(plan, t)) for t in chosen]
    ends = [
        (np.asarray(t.entry_lps, dtype=float), np.asarray(t.target_lps, dtype=float))
        for t in chosen
        if np.linalg.norm(np.subtract(t.target_lps, t.entry_lps)) > 1e-6
    ]
    factor = report_downsample(image.spacing)
    try:
        volume: AttenuationVolume = prepare_volume(image, downsample=factor)
    except SacroplanError as exc:
        return FluoroFigures(missing=f"{exc}.")
    iso, iso_text = _isocentre(study, ends)
    views = _views(study, ends, iso)
    anatomy = study.case.anatomy
    out = FluoroFigures()
    for name, view in views.items():
        drr = render_drr(volume, view.geometry)
        projected = overlays(view.geometry, anatomy=anatomy, lesion_mask=study.lesion_mask)
        key = FLUORO_PREFIX + name
        out.images[key] = drr_png(drr, title=_title(name), needles=needles, projected=projected)
        out.captions[key] = _caption(name, view, len(ends))
        out.geometries[key] = view.geometry
    g = next(iter(views.values())).geometry
    vox = " × ".join(f"{v:.2g}" for v in volume.spacing)
    src = " × ".join(f"{v:.2g}" for v in image.spacing)
    how = (
        f"the study's {src} mm voxels averaged in blocks of {factor}³"
        if factor > 1
        else "the study's full resolution"
    )
    out.about = (
        f"Digitally reconstructed radiographs of the CT ({vox} mm voxels: {how}), cone beam "
        f"with the source {g.sid_mm / 10:.0f} cm from the detector and {g.sod_mm / 10:.0f} cm "
        f"from the isocentre, detector {g.detector_shape[1]} × {g.detector_shape[0]} pixels of "
        f"{g.pixel_mm[1]:.2g} mm; bone dark as on the fluoroscopy monitor. Isocentre of the AP "
        f"and lateral views: {iso_text}; of a bull's-eye view: the needle tip. "
        + (
            "Needles at their real diameter (needle 1 green, needle 2 orange), "
            if len(needles) > 1
            else "The needle at its real diameter (green), "
        )
        + "foramina dashed yellow, lesion outline red; letters: the patient direction nearest "
        "each image edge (R/L, A/P, H/F)."
    )
    return out

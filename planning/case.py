"""One planning case, headless: open a study (or the sample), find the anatomy, grow the lesion.

The command line and the workstation drive the same functions, so every number the window
shows can be reproduced from Python or the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imaging.anatomy import AnatomyMasks, segment_anatomy
from imaging.anatomy_grid import release_free_memory
from imaging.anatomy_mr import segment_anatomy_mr
from imaging.errors import SacroplanError
from imaging.labels import Label
from imaging.lesion import GrowOptions, LesionResult, grow_lesion
from imaging.lesion_metrics import LesionMetrics, lesion_metrics
from imaging.phantom import PhantomTruth, make_phantom
from imaging.read import load
from imaging.volume import Volume
from planning.anatomy import SacralAnatomy

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class Case:
    """The study being planned and what has been derived from it so far.

    Attributes
    ----------
    image : Volume
        The study (CT in HU or MR).
    source : str
        Where it came from (a path, or ``"sample:<site>"``).
    sample_truth : PhantomTruth or None
        The analytic truth when the study is the built-in sample.
    masks : AnatomyMasks or None
        Automatic anatomy (on a CT, or on a T1-weighted MR through a synthetic CT).
    anatomy : SacralAnatomy or None
        Landmarks, sacral frame and Denis zones.
    lesion : LesionResult or None
    metrics : LesionMetrics or None
    timings_s : dict of str to float
        Seconds per step.
    """

    image: Volume
    source: str
    sample_truth: PhantomTruth | None = None
    masks: AnatomyMasks | None = None
    anatomy: SacralAnatomy | None = None
    lesion: LesionResult | None = None
    metrics: LesionMetrics | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, series_uid: str | None = None) -> Case:
        """Read a study (folder, DICOMDIR, file) through the same reader as ``sacroplan info``.

        Raises
        ------
        StudyReadError
            Unreadable study, or several series and no ``series_uid``.
        """
        t0 = time.perf_counter()
        image = load(path, series_uid=series_uid)
        case = cls(image=image, source=str(path))
        case.timings_s["load"] = time.perf_counter() - t0
        return case

    @classmethod
    def sample(
        cls,
        *,
        lesion: str = "left_ala_s1",
        modality: str = "ct",
        spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> Case:
        """The built-in synthetic sample, with its analytic truth."""
        t0 = time.perf_counter()
        phantom = make_phantom(lesion=lesion, modality=modality, spacing_mm=spacing_mm)
        image = phantom.image
        image.meta.setdefault("description", f"sacroplan sample ({lesion})")
        case = cls(image=image, source=f"sample:{lesion}", sample_truth=phantom.truth)
        case.timings_s["load"] = time.perf_counter() - t0
        return case

    def default_seed(self) -> np.ndarray | None:
        """The sample's lesion centre (None for a real study: the user must click)."""
        if self.sample_truth is None or self.sample_truth.lesion is None:
            return None
        return np.asarray(self.sample_truth.lesion.center_lps, dtype=np.float64)

    # -- steps ---------------------------------------------------------------------------------
    def find_anatomy(
        self, *, progress: ProgressFn | None = None, cancel: CancelFn | None = None
    ) -> SacralAnatomy:
        """Automatic anatomy: on a CT directly, on a T1-weighted MR through a pseudo-CT.

        Raises
        ------
        SegmentationError
            No sacrum found (on MR, e.g. a STIR or fat-suppressed series: the user places
            the landmarks by hand instead).
        """
        t0 = time.perf_counter()
        if self.image.modality.upper() == "CT":
            self.masks = segment_anatomy(self.image, progress=progress, cancel=cancel)
        else:
            self.masks = segment_anatomy_mr(self.image, progress=progress, cancel=cancel)
        self.anatomy = SacralAnatomy.from_masks(self.masks)
        self.notes.extend(self.masks.notes)
        release_free_memory()  # the landmarks' working memory too, not only the masks'
        self.timings_s["anatomy"] = time.perf_counter() - t0
        return self.anatomy

    def grow_lesion(
        self, seed_lps: np.ndarray, *, options: GrowOptions | None = None
    ) -> LesionMetrics:
        """Segment the lesion around ``seed_lps`` (LPS mm) and measure it.

        Raises
        ------
        LesionSegmentationError
            Seed outside the study or the bone, value outside the band, or a leak.
        """
        t0 = time.perf_counter()
        seed = np.asarray(seed_lps, float)
        bone = self._bone_for_seed(seed) if self.masks is not None else None
        self.lesion = grow_lesion(
            self.image, seed, options=options or GrowOptions(), bone_mask=bone
        )
        self.timings_s["lesion"] = time.perf_counter() - t0
        self.metrics = self.measure_lesion()
        release_free_memory()  # the metrics' working memory (zone map, masks on the study grid)
        return self.metrics

    def _bone_for_seed(self, seed: np.ndarray) -> Volume:
        """The bone a lesion may grow in: the sacrum, or its closed envelope near the seed.

        A lesion that has eroded into a foramen or through the cortex is open to the outside,
        so hole filling leaves it out of the sacrum mask. When the seed falls in such a gap,
        the sacrum closed around the seed (minus the canal) with the smallest ball of
        :data:`ENVELOPE_CLOSING_MM` that takes the seed in stands in for the bone.
        """
        assert self.masks is not None
        sacrum = self.masks.mask("sacrum")
        ijk = np.round(sacrum.world_to_index(seed)).astype(int)
        size = np.asarray(sacrum.size)
        if np.all((ijk >= 0) & (ijk < size)) and sacrum.array[ijk[2], ijk[1], ijk[0]]:
            return sacrum
        for radius_mm in ENVELOPE_CLOSING_MM:
            envelope = closed_envelope(
                sacrum, seed, radius_mm=radius_mm, exclude=self.masks.masks["canal"]
            )
            if envelope is not None:
                break
        else:
            return sacrum
        self.notes.append(
            "the seed lies in a gap of the sacrum outline (a lesion open to a foramen or through "
            "the cortex): growth was confined to the closed outline of the sacrum instead"
        )
        return envelope

    def measure_lesion(self) -> LesionMetrics:
        """Metrics of the current lesion mask against the current anatomy."""
        if self.lesion is None:
            raise SacroplanError("no lesion yet: click a seed point inside the lesion first")
        kwargs: dict[str, Any] = {}
        if self.masks is not None:
            kwargs["foramen_mask"] = self.masks.mask("foramina")
            kwargs["canal_mask"] = self.masks.mask("canal")
            kwargs["bone_mask"] = self.masks.mask("sacrum")
        if self.anatomy is not None and self.anatomy.foramina:
            kwargs["zone_map"] = self._lesion_zone_map()
            frame = self.anatomy.frame
            kwargs["sacral_axes"] = np.column_stack([frame.e_x, frame.e_y, frame.e_z])
        return lesion_metrics(self.lesion.mask, **kwargs)

    def _lesion_zone_map(self) -> Volume:
        """Denis zones over the lesion's bounding box, from the foraminal lines.

        The anatomy's own zone map covers only the sacrum mask, which a lesion breaking
        through the cortex or into a foramen is partly outside of; the zones are defined by
        the landmarks, so they are evaluated at the lesion's voxels directly.
        """
        assert self.lesion is not None and self.anatomy is not None
        mask = self.lesion.mask
        # the lesion's bounding box, without a study-sized temporary
        nz = [np.flatnonzero(mask.array.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
        lo = np.maximum(np.array([n[0] for n in nz]) - 2, 0)
        hi = np.minimum(np.array([n[-1] for n in nz]) + 3, mask.array.shape)
        kk, jj, ii = np.meshgrid(
            *(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij"
        )
        ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
        zones = self.anatomy.zone_of(mask.index_to_world(ijk))
        out = np.zeros(mask.array.shape, dtype=np.uint8)
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = zones.reshape(kk.shape)
        return mask.with_array(out, modality="LABEL")

    # -- outputs -------------------------------------------------------------------------------
    def label_map(self) -> Volume:
        """One label image on the study grid: 1 sacrum, 2/3 left/right ilium, 4 foramina,
        5 canal, 6 lesion (0 elsewhere)."""
        out = np.zeros(self.image.array.shape, dtype=np.uint8)
        if self.masks is not None:
            crop = self.masks.label_map().array.copy()
            crop[crop == Label.SI_JOINT] = 0
            out = self.masks.paste(crop, self.image).array
        if self.lesion is not None:
            out[self.lesion.mask.array > 0] = Label.LESION
        return self.image.with_array(out, modality="LABEL")

    def anatomy_json(self) -> dict[str, Any] | None:
        """The ``anatomy`` block of ``sacroplan segment --json``."""
        if self.anatomy is None:
            return None
        a = self.anatomy
        out: dict[str, Any] = {
            "s1_endplate": {
                "center_lps": _round(a.endplate_center),
                "normal": _round(a.endplate_normal, 4),
            },
            "sacral_frame": {
                "origin": _round(a.frame.origin),
                "e_x": _round(a.frame.e_x, 4),
                "e_y": _round(a.frame.e_y, 4),
                "e_z": _round(a.frame.e_z, 4),
            },
            "foramina": [
                {
                    "name": f.name,
                    "level": f.level,
                    "side": f.side,
                    "center_lps": _round(f.center_lps),
                    "axis": None if f.axis is None else _round(f.axis, 4),
                    "radius_mm": round(float(f.radius_mm), 2),
                }
                for f in a.foramina.values()
            ],
        }
        if self.masks is not None:
            summary = self.masks.summary()
            voxel_ml = self.masks.image.voxel_volume_mm3 / 1000.0
            m = self.masks.masks
            out["sacrum_volume_ml"] = round(float(m["sacrum"].sum()) * voxel_ml, 2)
            out["canal"] = {
                "volume_ml": round(float(m["canal"].sum()) * voxel_ml, 2),
                "found": bool(m["canal"].any()),
            }
            out["missing_foramina"] = list(self.masks.missing_foramina)
            out["notes"] = list(summary.get("notes", []))
        return out

    def segment_json(self) -> dict[str, Any]:
        """The whole ``sacroplan segment --json`` document."""
        lesion = None
        if self.metrics is not None and self.lesion is not None:
            lesion = self.metrics.to_json()
            lesion["seed_lps"] = _round(self.lesion.seed_lps)
            lesion["mode"] = self.lesion.mode_used
            lesion["band"] = [round(v, 1) for v in self.lesion.band]
            lesion["warnings"] = list(self.lesion.warnings)
        return {
            "source": self.source,
            "modality": self.image.modality,
            "lesion": lesion,
            "anatomy": self.anatomy_json(),
            "notes": list(self.notes),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


# Ball radii tried in turn: 8 mm closes foramen-sized gaps (S1 foramina are ~13 mm across),
# 16 mm a 3 cm lesion that has eroded a foramen.
ENVELOPE_CLOSING_MM = (8.0, 12.0, 16.0)
ENVELOPE_BOX_MM = 50.0  # half-width of the block around the seed that is closed


def closed_envelope(
    mask: Volume, seed_lps: np.ndarray, *, radius_mm: float, exclude: np.ndarray | None = None
) -> Volume | None:
    """``mask`` closed with a ball of ``radius_mm`` in a block around the seed.

    Returns None when the seed is outside the grid or still outside the closed mask.
    The closing is done with Euclidean distance maps in mm (anisotropic spacing honoured).
    """
    from scipy import ndimage as ndi

    ijk = np.round(mask.world_to_index(seed_lps)).astype(int)
    size = np.asarray(mask.size)
    if not np.all((ijk >= 0) & (ijk < size)):
        return None
    half = np.ceil((ENVELOPE_BOX_MM + 2 * radius_mm) / mask.spacing).astype(int)
    lo = np.maximum(ijk - half, 0)
    hi = np.minimum(ijk + half + 1, size)
    block = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    sub = np.asarray(mask.array[block]) > 0
    sampling = mask.spacing[::-1]
    grown = ndi.distance_transform_edt(~sub, sampling=sampling) <= radius_mm
    closed = ndi.distance_transform_edt(grown, sampling=sampling) > radius_mm
    closed |= sub
    if exclude is not None:
        closed &= ~(np.asarray(exclude[block]) > 0)
    s = ijk - lo
    if not closed[s[2], s[1], s[0]]:
        return None
    out = np.zeros(mask.array.shape, dtype=np.uint8)
    out[block] = closed
    return mask.with_array(out, modality="LABEL")


def _round(v: np.ndarray, digits: int = 2) -> list[float]:
    return [round(float(x), digits) for x in np.asarray(v).reshape(-1)]

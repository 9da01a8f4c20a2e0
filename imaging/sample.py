"""Writing the built-in sample (the synthetic phantom) to disk as a user would receive it."""

from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk

from imaging.atomic import atomic_path, atomic_write_text
from imaging.dicom_write import write_series
from imaging.errors import SacroplanError
from imaging.phantom import make_phantom


def write_sample(
    out_dir: Path,
    *,
    lesion: str = "left_ala_s1",
    modality: str = "ct",
    spacing_mm: tuple[float, ...] = (1.0, 1.0, 1.0),
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> dict[str, Path]:
    """Generate the phantom and write a DICOM series, its label image and ``truth.json``.

    Parameters
    ----------
    out_dir : Path
        Folder to create (may exist; existing sample files are replaced).
    lesion, modality, spacing_mm, rotation_deg
        Passed to :func:`imaging.phantom.make_phantom`.

    Returns
    -------
    dict
        ``{"dicom": folder, "labels": labels.nii.gz, "truth": truth.json}``.

    Raises
    ------
    SacroplanError
        When the output folder cannot be written.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SacroplanError(f"cannot create the output folder {out_dir}: {exc.strerror}") from exc
    phantom = make_phantom(
        lesion=lesion, modality=modality, spacing_mm=tuple(spacing_mm), rotation_deg=rotation_deg
    )
    dicom_dir = out_dir / "dicom"
    dicom_dir.mkdir(exist_ok=True)
    for old in dicom_dir.glob("*.dcm"):
        old.unlink()
    label = "CT" if modality == "ct" else "MR"
    write_series(
        phantom.image,
        dicom_dir,
        modality=label,
        series_description=f"sacroplan sample {label} ({lesion})",
    )
    labels_path = out_dir / "labels.nii.gz"
    with atomic_path(labels_path) as tmp:
        sitk.WriteImage(phantom.labels.to_sitk(), str(tmp), useCompression=True)
    truth_path = out_dir / "truth.json"
    atomic_write_text(truth_path, json.dumps(phantom.truth.to_json(), indent=2))
    return {"dicom": dicom_dir, "labels": labels_path, "truth": truth_path}

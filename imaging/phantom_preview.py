"""PNG previews of the synthetic phantom (a developer tool; needs matplotlib).

Run ``python -m imaging.phantom_preview [--out DIR] [--lesion SITE] [--mr]`` to write an
axial slice through S1, sagittal slices through the midline and the left ala, and a world
coronal and an oblique (sacral) coronal slice through the foramina, each plain and with
the label map overlaid. Slices are resampled from the volume at their world positions, so
they also work on anisotropic, oblique grids.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

from imaging.phantom import LESION_SITES, Phantom, make_phantom
from imaging.volume import Volume

_X = np.array([1.0, 0.0, 0.0])
_Y = np.array([0.0, 1.0, 0.0])
_Z = np.array([0.0, 0.0, 1.0])


def sample_plane(
    volume: Volume,
    center_lps: np.ndarray,
    right: np.ndarray,
    down: np.ndarray,
    *,
    half_width_mm: float,
    half_height_mm: float,
    step_mm: float = 0.5,
    order: int = 1,
) -> np.ndarray:
    """Resample a planar slice of ``volume``.

    Parameters
    ----------
    volume : Volume
    center_lps : (3,) float ndarray, mm, LPS
        Centre of the slice.
    right, down : (3,) float ndarray
        Unit LPS directions of the image columns and rows.
    half_width_mm, half_height_mm : float
        Half extent of the slice.
    step_mm : float
        Pixel size of the slice.
    order : int
        Interpolation order (0 for label maps).

    Returns
    -------
    (rows, columns) float32 ndarray
        Values outside the volume take its minimum.
    """
    a = np.arange(-half_width_mm, half_width_mm + 1e-9, step_mm)
    b = np.arange(-half_height_mm, half_height_mm + 1e-9, step_mm)
    aa, bb = np.meshgrid(a, b, indexing="xy")
    pts = center_lps + aa[..., None] * right + bb[..., None] * down
    ijk = volume.world_to_index(pts.reshape(-1, 3))
    out = map_coordinates(
        volume.array.astype(np.float32),
        ijk[:, ::-1].T,
        order=order,
        cval=float(volume.array.min()),
    )
    return out.reshape(aa.shape)


def preview_views(phantom: Phantom) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Slice definitions ``name -> (centre, right, down, half extent)`` in LPS mm."""
    truth = phantom.truth
    origin = truth.sacral_frame.origin
    s1_mid = origin - 13.5 * truth.sacral_frame.e_z
    left_s1 = truth.foramen("left S1").center_lps
    left_s3 = truth.foramen("left S3").center_lps
    down = left_s3 - left_s1
    down -= (down @ _X) * _X
    down /= np.linalg.norm(down)
    mid = 0.5 * (left_s1 + left_s3)
    mid[0] = origin[0]
    world_cor = np.array([origin[0], 0.5 * (left_s1[1] + left_s3[1]), origin[2] - 35.0])
    return {
        "axial_S1": (np.array([origin[0], origin[1] - 10.0, s1_mid[2]]), _X, _Y, 120.0),
        "sagittal_midline": (origin + np.array([0.0, 10.0, -35.0]), _Y, -_Z, 90.0),
        "sagittal_left_ala": (origin + np.array([38.0, 10.0, -35.0]), _Y, -_Z, 90.0),
        "coronal_foramina": (world_cor, _X, -_Z, 95.0),
        "oblique_coronal_foramina": (mid, _X, down, 85.0),
    }


def write_previews(phantom: Phantom, out_dir: Path, *, prefix: str = "phantom") -> list[Path]:
    """Write one PNG per view (image, and image with labels) and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    out_dir.mkdir(parents=True, exist_ok=True)
    ct = phantom.image.modality == "CT"
    window = (-250.0, 1300.0) if ct else (0.0, 1.1)
    colours = ["none", "orange", "red", "green", "magenta", "cyan", "yellow", "blue"]
    cmap = ListedColormap(colours)
    paths = []
    for name, (center, right, down, half) in preview_views(phantom).items():
        kw = {"half_width_mm": half, "half_height_mm": half * 0.75, "step_mm": 0.4}
        img = sample_plane(phantom.image, center, right, down, **kw)
        lab = sample_plane(phantom.labels, center, right, down, order=0, **kw)
        extent = (-half, half, half * 0.75, -half * 0.75)
        fig, axes = plt.subplots(1, 2, figsize=(16, 6.5))
        for ax, overlay in zip(axes, (False, True), strict=True):
            ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], extent=extent)
            if overlay:
                masked = np.ma.masked_equal(np.rint(lab).astype(int), 0)
                ax.imshow(masked, cmap=cmap, vmin=0, vmax=7, alpha=0.4, extent=extent)
            ax.set_title(f"{name} ({phantom.truth.options.get('lesion')})")
            ax.set_xlabel("mm")
        fig.tight_layout()
        path = out_dir / f"{prefix}_{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line: write the preview PNGs; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("phantom_png"))
    parser.add_argument("--lesion", choices=LESION_SITES, default="left_ala_s1")
    parser.add_argument("--mr", action="store_true", help="T1-like MR instead of CT")
    args = parser.parse_args(argv)
    phantom = make_phantom(lesion=args.lesion, modality="mr" if args.mr else "ct")
    prefix = f"{args.lesion}_{'mr' if args.mr else 'ct'}"
    for path in write_previews(phantom, args.out, prefix=prefix):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

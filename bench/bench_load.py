"""Benchmark: loading a 512 x 512 x 300 CT series, ours against SimpleITK and a plain pydicom loop.

Run from the repository root::

    python -m bench.bench_load            # full size, 3 repeats
    python -m bench.bench_load --quick    # 512 x 512 x 60, 1 repeat

    python -m bench.bench_load --all-syntaxes   # also JPEG 2000 lossless and RLE

A CT-like volume (the built-in phantom resampled to 512 x 512 x 300, int16 HU) is written into a
temporary folder uncompressed (Explicit VR Little Endian) and JPEG-LS lossless (a common PACS
transfer syntax), and with ``--all-syntaxes`` also JPEG 2000 lossless and RLE lossless. Each
series is read, side by side in this process, by

- ours: ``imaging.read.load`` (scan the folder, order the slices along the normal, check the
  geometry, decode, rescale to HU);
- SimpleITK: ``ImageSeriesReader`` with GDCM's file-name ordering (no geometry checks);
- pydicom loop: ``dcmread`` every file, sort on ImagePositionPatient, stack ``pixel_array``.

Reported: median seconds, MB/s of decoded voxels, and our time against SimpleITK's (the target is
at most 1.2x). Peak memory is measured in a fresh child process per reader, as the rise of the
peak RSS over the process's RSS after its imports, divided by the volume's bytes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import SimpleITK as sitk

from bench._table import Row, child_peak_rise, format_table, machine_line, side_by_side

ROOT = Path(__file__).resolve().parents[1]
GROUP = "loading"


def ct_volume(n_slices: int):
    """The phantom CT resampled to 512 x 512 x ``n_slices`` voxels (int16 HU)."""
    from imaging.phantom import make_phantom
    from imaging.volume import Volume

    small = make_phantom(spacing_mm=(1.2, 1.2, 2.0)).image.to_sitk()
    size = np.array([512, 512, n_slices])
    extent = np.array(small.GetSize()) * np.array(small.GetSpacing())
    spacing = extent / size
    out = sitk.Resample(
        small,
        [int(v) for v in size],
        sitk.Transform(),
        sitk.sitkLinear,
        small.GetOrigin(),
        tuple(float(v) for v in spacing),
        small.GetDirection(),
        -1024.0,
        sitk.sitkInt16,
    )
    return Volume.from_sitk(out, modality="CT")


# Compressed variants: table name -> transfer syntax UID.
COMPRESSED = {
    "JPEG-LS": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "JPEG 2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "RLE": "1.2.840.10008.1.2.5",  # RLE lossless
}
DEFAULT_SYNTAXES = ("uncompressed", "JPEG-LS")


def write_variants(volume: object, root: Path, syntaxes: tuple[str, ...]) -> dict[str, Path]:
    """Write the volume uncompressed and in the compressed ``syntaxes``; return the folders."""
    import pydicom
    from pydicom.uid import generate_uid

    from imaging.dicom_write import write_series

    plain = root / "uncompressed"
    files = write_series(volume, plain, series_description="bench uncompressed")
    folders = {"uncompressed": plain} if "uncompressed" in syntaxes else {}
    for name in syntaxes:
        if name == "uncompressed":
            continue
        folder = root / name.replace(" ", "_")
        folder.mkdir()
        series_uid = generate_uid()
        for f in files:
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.compress(COMPRESSED[name])
            ds.save_as(folder / f.name, enforce_file_format=True)
        folders[name] = folder
    return folders


def read_ours(folder: Path) -> np.ndarray:
    from imaging.read import load

    return load(folder).array


def read_sitk(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayViewFromImage(reader.Execute())


def read_pydicom(folder: Path) -> np.ndarray:
    import pydicom

    slices = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    out = np.stack([ds.pixel_array for ds in slices])
    slope = float(getattr(slices[0], "RescaleSlope", 1.0))
    intercept = float(getattr(slices[0], "RescaleIntercept", 0.0))
    if slope != 1.0 or intercept != 0.0:
        out = (out * slope + intercept).astype(np.int16)
    return out


def peak_ratio(fn_name: str, folder: Path) -> float:
    """Peak RSS rise of a fresh process reading ``folder`` with ``fn_name`` / volume bytes."""
    setup = "from pathlib import Path\nfrom bench import bench_load as b\nimport imaging.read"
    run = f"arr = b.{fn_name}(Path({str(folder)!r}))\nnbytes = arr.nbytes"
    rise = child_peak_rise(setup, run + "\nprint(nbytes)")
    return rise / (512 * 512 * 2 * len(list(folder.iterdir())))


def collect(*, quick: bool = False, syntaxes: tuple[str, ...] = DEFAULT_SYNTAXES) -> list[Row]:
    """Measure loading of each of ``syntaxes`` ("uncompressed" or a key of COMPRESSED)."""
    n_slices = 60 if quick else 300
    repeats = 1 if quick else 3
    volume = ct_volume(n_slices)
    mb = volume.array.astype(np.int16).nbytes / 1e6
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sacroplan-bench-") as tmp:
        folders = write_variants(volume, Path(tmp), syntaxes)
        for syntax, folder in folders.items():
            what = f"512x512x{n_slices} {syntax}"
            ours, base = side_by_side(
                lambda f=folder: read_ours(f), lambda f=folder: read_sitk(f), repeats=repeats
            )
            _, loop = side_by_side(
                lambda f=folder: read_ours(f), lambda f=folder: read_pydicom(f), repeats=repeats
            )
            rows.append(
                Row(
                    GROUP,
                    f"{what}: time",
                    ours,
                    "s",
                    "SimpleITK ImageSeriesReader",
                    base,
                    base / ours,
                    "ours <= 1.2x SimpleITK",
                    ours <= 1.2 * base,
                    note=f"{mb / ours:.0f} MB/s ours, {mb / base:.0f} MB/s SimpleITK",
                )
            )
            rows.append(Row(GROUP, f"{what}: time", ours, "s", "pydicom loop", loop, loop / ours))
            for name, fn in (("ours", "read_ours"), ("SimpleITK", "read_sitk")):
                rows.append(
                    Row(
                        GROUP,
                        f"{what}: peak RSS / volume bytes, {name}",
                        peak_ratio(fn, folder),
                        "x",
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 slices, one repeat")
    parser.add_argument(
        "--all-syntaxes",
        action="store_true",
        help=f"also {', '.join(n for n in COMPRESSED if n not in DEFAULT_SYNTAXES)}",
    )
    args = parser.parse_args(argv)
    syntaxes = ("uncompressed", *COMPRESSED) if args.all_syntaxes else DEFAULT_SYNTAXES
    print(f"machine: {machine_line()}")
    print(format_table(collect(quick=args.quick, syntaxes=syntaxes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

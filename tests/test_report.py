"""The plan report: every section in the PDF's text, numbers matching the plan, pictures
rendered headless, a self-contained HTML file, and a report without pictures when the study
is gone."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.report import IMAGE_CAPTIONS, SECTIONS, write_report
from imaging.sample import write_sample
from planning.case import Case
from planning.plan import Plan, load_plan, save_plan, software_version
from planning.planner import PlanOptions, plan_case

pypdf = pytest.importorskip("pypdf")
REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def planned_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, Path, Case]:
    """The sample written as DICOM, read back, planned with RFA, saved: plan, file, case."""
    root = tmp_path_factory.mktemp("report")
    written = write_sample(root / "sample", spacing_mm=(1.5, 1.5, 1.5))
    truth = json.loads(Path(written["truth"]).read_text())
    case = Case.open(written["dicom"])
    case.find_anatomy()
    case.grow_lesion(np.asarray(truth["lesion"]["center_lps"], dtype=float))
    plan = plan_case(case, options=PlanOptions(with_rfa=True))
    path = root / "plan.json"
    plan = save_plan(plan, path)
    assert plan.suggestion is not None and plan.trajectories and plan.rfa is not None
    return plan, path, case


@pytest.fixture(scope="module")
def planned(planned_case: tuple[Plan, Path, Case]) -> tuple[Plan, Path]:
    return planned_case[0], planned_case[1]


def _words(text: str) -> str:
    """PDF text with any run of white space (tabs, line breaks) as one space, ligatures
    (the font's "fl", "fi" glyphs) spelt out."""
    ligatures = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl"}
    for glyph, letters in ligatures.items():
        text = text.replace(glyph, letters)
    return re.sub(r"\s+", " ", text.replace("\u00ad", "")).strip()


def _pdf_text(path: Path) -> tuple[str, int]:
    reader = pypdf.PdfReader(str(path))
    images = sum(len(page.images) for page in reader.pages)
    return _words(" ".join(page.extract_text() for page in reader.pages)), images


@pytest.fixture(scope="module")
def pdf(planned: tuple[Plan, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.cli import main

    _, plan_path = planned
    out = tmp_path_factory.mktemp("pdf") / "report.pdf"
    assert main(["report", str(plan_path), "--out", str(out)]) == 0
    return out


def test_pdf_has_every_section_and_the_pictures(pdf: Path) -> None:
    assert pdf.read_bytes().startswith(b"%PDF")
    text, n_images = _pdf_text(pdf)
    for title in SECTIONS:
        assert title in text, title
    assert "Planning aid — verify clinically" in text
    assert "AJNR Am J Neuroradiol 2022;43:1222–1227" in text
    assert "126 patients, 162 sacral metastases" in text
    assert f"sacroplan version {software_version()}" in text
    # axial, sagittal, 3D, bull's-eye and the clearance plot
    assert n_images >= 5
    assert "Note:" not in text  # everything could be drawn


def test_pdf_numbers_match_the_plan(planned: tuple[Plan, Path], pdf: Path) -> None:
    plan, _ = planned
    text, _ = _pdf_text(pdf)
    les = plan.lesion
    assert f"{les['volume_ml']:.2f} mL" in text
    assert f"{les['max_diameter_mm']:.1f} mm" in text
    chosen = plan.candidates[plan.suggestion.candidate]
    assert _words(chosen.c_arm.text) in text
    assert _words(plan.suggestion.reasons[0]) in text
    nearest = min(chosen.clearance_mm.by_foramen.values())
    assert f"{nearest:.1f} mm" in text
    cem = plan.cement
    assert f"{cem.suggested_ml:.1f} mL" in text
    assert f"{cem.band_ml[0]:.1f}–{cem.band_ml[1]:.1f} mL" in text
    assert f"{100 * cem.predicted_filling:.0f} %" in text
    assert f"{plan.rfa.n_ablations} on {plan.rfa.n_tracks} track(s)" in text
    for key, entry in plan.best_by_approach.items():
        if "blocked_by" in entry:
            assert _words(entry["blocked_by"][0])[:40] in text, key
    # identifiers of the (synthetic) patient are in the named report
    assert "SACROPLAN^PHANTOM" in text and "PHANTOM" in text


def test_anonymous_report_leaves_identifiers_out(
    planned: tuple[Plan, Path], tmp_path: Path
) -> None:
    plan, _ = planned
    out = write_report(plan, tmp_path / "anon.html", anonymous=True)
    html_text = out.read_text()
    assert "SACROPLAN^PHANTOM" not in html_text
    assert plan.case.series_uid not in html_text
    assert str(plan.case.source_path) not in html_text
    assert "anonymised" in html_text


def test_html_is_self_contained(planned: tuple[Plan, Path], tmp_path: Path) -> None:
    plan, _ = planned
    out = write_report(plan, tmp_path / "report.html")
    text = out.read_text()
    sources = re.findall(r"<img src='([^']*)'", text)
    # the pictures, the clearance plot and the AP, lateral and one bull's-eye radiograph
    assert len(sources) == len(IMAGE_CAPTIONS) + 1 + 3
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    for title in SECTIONS:
        assert re.search(rf"<h2[^>]*>{re.escape(title)}</h2>", text), title


def test_report_without_the_study_says_why(planned: tuple[Plan, Path], tmp_path: Path) -> None:
    plan, _ = planned
    moved = dataclasses.replace(
        plan, case=dataclasses.replace(plan.case, source_path=str(tmp_path / "moved-away"))
    )
    out = write_report(moved, tmp_path / "no-study.pdf")
    text, n_images = _pdf_text(out)
    assert n_images == 0
    assert "pictures are missing" in text and "moved-away" in text
    for title in SECTIONS:
        assert title in text


def test_pictures_from_the_workstation_are_used_as_given(
    planned: tuple[Plan, Path], tmp_path: Path
) -> None:
    plan, _ = planned
    moved = dataclasses.replace(plan, case=dataclasses.replace(plan.case, source_path=None))
    from PySide6.QtGui import QColor, QImage

    from app.report import ensure_qt_gui

    ensure_qt_gui()
    pictures = {}
    for n, key in enumerate([*IMAGE_CAPTIONS, "clearance"]):
        img = QImage(40 + n, 30, QImage.Format.Format_RGB32)
        img.fill(QColor(10 * n, 100, 200))
        path = tmp_path / f"{key}.png"
        img.save(str(path))
        pictures[key] = path.read_bytes()
    out = write_report(moved, tmp_path / "given.html", images=pictures)
    text = out.read_text()
    assert "pictures are missing" not in text  # the study was not needed
    # ... except for the simulated fluoroscopy, which says in one line why it is not there
    assert "No simulated fluoroscopy: the study could not be opened" in text
    for png in pictures.values():
        assert base64.b64encode(png).decode() in text


def test_report_errors(planned: tuple[Plan, Path], tmp_path: Path, capsys) -> None:
    from app.cli import main

    _, plan_path = planned
    assert main(["report", str(plan_path), "--out", str(tmp_path / "r.docx")]) == 2
    assert ".pdf or .html" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none.json"), "--out", str(tmp_path / "r.pdf")]) == 2
    assert "cannot open the plan" in capsys.readouterr().err

    # a plan naming as its study a file that is not one is refused, not half-reported
    plan, _ = planned
    notes = tmp_path / "notes.txt"
    notes.write_text("not a study")
    odd = dataclasses.replace(plan, case=dataclasses.replace(plan.case, source_path=str(notes)))
    odd_path = tmp_path / "odd.json"
    save_plan(odd, odd_path)
    out = tmp_path / "odd.pdf"
    assert main(["report", str(odd_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    # ... unless the user asks for no pictures
    assert main(["report", str(odd_path), "--out", str(out), "--no-images"]) == 0
    text, n_images = _pdf_text(out)
    assert n_images == 0 and "study was not opened" in text


@pytest.mark.parametrize("display", ["none", "xvfb"])
def test_pictures_render_headless(planned: tuple[Plan, Path], tmp_path: Path, display: str) -> None:
    """Offscreen VTK with no X display at all (EGL), and under Xvfb."""
    _, plan_path = planned
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    out = tmp_path / "report.pdf"
    cmd = [sys.executable, "-m", "app.cli", "report", str(plan_path), "--out", str(out)]
    if display == "xvfb":
        import shutil

        if shutil.which("xvfb-run") is None:
            pytest.skip("xvfb-run is not installed")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", *cmd]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    text, n_images = _pdf_text(out)
    assert n_images >= 5 and "Note:" not in text


def test_plan_records_what_reopening_the_study_needs(planned: tuple[Plan, Path]) -> None:
    _, plan_path = planned
    plan = load_plan(plan_path)
    assert plan.case.modality == "CT" and plan.case.grid is not None
    assert plan.case.series_uid and Path(plan.case.source_path).is_dir()
    assert plan.lesion["mask"]["shape"] == list(reversed(plan.case.grid["size"]))
    assert len(plan.lesion["band"]) == 2


def test_workstation_case_is_drawn_without_reopening_the_study(
    planned_case: tuple[Plan, Path, Case], tmp_path: Path
) -> None:
    plan, _, case = planned_case
    nowhere = dataclasses.replace(plan, case=dataclasses.replace(plan.case, source_path=None))
    out = write_report(nowhere, tmp_path / "from-case.html", case=case)
    text = out.read_text()
    assert "Note:" not in text
    n_pictures = len(re.findall(r"<img src='data:image/png;base64,", text))
    assert n_pictures == len(IMAGE_CAPTIONS) + 1 + 3  # with the AP, lateral, bull's-eye DRRs


# -- multi-needle plans ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_needles(planned_case: tuple[Plan, Path, Case]) -> Plan:
    """The sample plan with two needles asked for (a real pair meeting every margin)."""
    from planning.multi_needle import plan_multi_needle, with_multi_needle

    plan, _, case = planned_case
    multi = plan_multi_needle(case, plan=plan, options=PlanOptions(with_rfa=True), needles=2)
    assert len(multi.needles) == 2, multi.reasons
    return with_multi_needle(plan, multi)


def _orange_pixels(png: bytes) -> int:
    """Pixels of needle 2's colour (orange, any shade: lit or in shadow) in a picture."""
    from PIL import Image

    from app.report_images import needle_colour

    r, g, b = np.moveaxis(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float), 2, 0)
    red, green, blue = needle_colour(1)
    assert blue == 0.0 and red == 1.0  # the test below relies on it
    hue = (r >= 60) & (b <= 12) & (np.abs(g - green * r) <= 0.05 * r + 4)
    return int(np.count_nonzero(hue))


def test_report_lists_every_needle_with_its_numbers(two_needles: Plan, tmp_path: Path) -> None:
    out = write_report(two_needles, tmp_path / "two.pdf")
    text, n_images = _pdf_text(out)
    assert n_images >= 5 and "Note:" not in text
    m = two_needles.multi_needle
    section = text[text.index("Needles") : text.index("Needle Needle")]
    for placed in m.needles:
        c = placed.candidate
        assert placed.label in section
        assert f"{placed.cement_ml:.2f} mL" in section
        assert f"{placed.reaches_ml:.1f} mL" in section
        nearest = min(c.clearance_mm.by_foramen.values())
        assert f"{nearest:.1f} mm" in section
        assert f"{c.skin_to_target_mm:.0f} / {c.in_bone_mm:.0f} mm" in section
        assert _words(c.c_arm.text) in section
    assert f"{100 * m.coverage:.0f} % of the {m.lesion_ml:.1f} mL lesion" in section
    assert f"tips {m.tip_gap_mm:.1f} mm apart" in section
    assert _words(m.reasons[0])[:60] in section


def test_pictures_show_every_needle(two_needles: Plan, planned_case, tmp_path: Path) -> None:
    """Needle 2 is drawn (in its own colour) in the slices, the 3D view and the depth plot."""
    from app.report_images import render_report_images
    from planning.export import open_plan_study

    plan, _, _ = planned_case
    study = open_plan_study(plan)
    one = render_report_images(plan, study, size_px=400)
    two = render_report_images(two_needles, study, size_px=400)
    assert set(two) == set(one) == {*IMAGE_CAPTIONS, "clearance"}
    for key in ("axial", "sagittal", "view3d", "clearance"):
        assert _orange_pixels(one[key]) == 0, key
        assert _orange_pixels(two[key]) > 20, key


# -- simulated fluoroscopy and wording ------------------------------------------------------------
def test_pdf_has_the_simulated_fluoroscopy(planned: tuple[Plan, Path], pdf: Path) -> None:
    plan, _ = planned
    text, n_images = _pdf_text(pdf)
    section = text[text.index("Simulated fluoroscopy") : text.index("Best candidate per approach")]
    assert "AP. Straight AP (table frame)" in section
    assert "Lateral: detector 90° toward the patient's left" in section
    chosen = plan.candidates[plan.suggestion.candidate]
    assert "Bull's-eye view of the needle" in section
    assert _words(chosen.c_arm.text) in section  # the bull's-eye angles in words
    assert "bone dark as on the fluoroscopy monitor" in section
    assert "1.5 × 1.5 × 1.5 mm voxels" in section  # the resolution used is stated
    assert n_images >= 5 + 3


def _rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


def _has_colour(rgb: np.ndarray, uv: np.ndarray, colour: tuple[float, ...], r: int = 2) -> bool:
    """Some pixel within ``r`` of ``(col, row)`` is ``colour`` (0..1) within 12 levels."""
    c, w = int(round(uv[0])), int(round(uv[1]))
    patch = rgb[max(w - r, 0) : w + r + 1, max(c - r, 0) : c + r + 1]
    target = np.asarray(colour) * 255.0
    return bool(np.any(np.all(np.abs(patch - target) <= 12.0, axis=-1)))


def test_drr_pictures_are_radiographs_with_the_needles_where_they_project(
    two_needles: Plan, planned_case: tuple[Plan, Path, Case]
) -> None:
    from app.report_fluoro import render_fluoro_figures
    from app.report_images import needle_colour
    from imaging.drr import DEFAULT_SID_MM, DEFAULT_SOD_MM
    from planning.export import open_plan_study

    plan, _, _ = planned_case
    study = open_plan_study(plan)
    figs = render_fluoro_figures(two_needles, study)
    assert figs.missing is None
    keys = ["drr_ap", "drr_lateral", "drr_bulls_eye_1", "drr_bulls_eye_2"]
    assert list(figs.images) == keys
    for key in keys:
        png = figs.images[key]
        assert png.startswith(PNG_MAGIC)
        g = figs.geometries[key]
        rgb = _rgb(png)
        assert rgb.shape[:2] == g.detector_shape  # one picture pixel per detector pixel
        gray = rgb.mean(axis=-1)
        assert gray.std() > 20.0, key  # a radiograph, not a blank picture
        assert g.sid_mm == DEFAULT_SID_MM and g.sod_mm == DEFAULT_SOD_MM
        for n, t in enumerate(two_needles.trajectories):
            tip = g.project_points(np.asarray(t.target_lps, dtype=float))
            if n == 0 or key != "drr_lateral":  # both tips project together in the lateral
                assert _has_colour(rgb, tip, needle_colour(n)), (key, n)
    # the bull's-eye of needle 1 looks down it: entry and tip land on the same pixel
    g = figs.geometries["drr_bulls_eye_1"]
    t = two_needles.trajectories[0]
    uv = g.project_points(np.array([t.entry_lps, t.target_lps], dtype=float))
    assert np.allclose(uv[0], uv[1], atol=1e-6)
    assert np.allclose(uv[1], g.principal_point, atol=1e-6)
    # bone is dark as on a fluoroscopy monitor: the sacrum darker than the air around
    ap = _rgb(figs.images["drr_ap"]).mean(axis=-1)
    centre = study.image.index_to_world((np.asarray(study.image.size) - 1) / 2.0)
    col, row = figs.geometries["drr_ap"].project_points(centre)
    assert ap[int(row), int(col)] < ap[2, 2]
    assert "Bull's-eye view of needle 2 (orange" in figs.captions["drr_bulls_eye_2"]


def test_mr_study_has_no_radiographs_and_says_why(planned_case) -> None:
    from app.report_fluoro import render_fluoro_figures
    from planning.export import open_plan_study

    plan, _, _ = planned_case
    study = open_plan_study(plan, anatomy=False)
    mr_image = study.image.with_array(study.image.array, modality="MR")
    mr = dataclasses.replace(study.case, image=mr_image)
    figs = render_fluoro_figures(plan, dataclasses.replace(study, case=mr))
    assert not figs.images and "MR" in figs.missing and "CT" in figs.missing
    from app.report import report_html

    html_text = report_html(plan, images={}, fluoro=figs)
    assert "No simulated fluoroscopy: the study is MR" in html_text


def test_needle_1_of_a_multi_needle_plan_is_not_called_suggested(
    two_needles: Plan, tmp_path: Path
) -> None:
    out = write_report(two_needles, tmp_path / "two.html", draw_images=False)
    text = _words(re.sub(r"<[^>]+>", " ", out.read_text()))
    needle = text[text.index("Needle Needle") : text.index("C-arm angles")]
    first = two_needles.trajectories[0]
    suggested = two_needles.candidates[two_needles.suggestion.candidate]
    same = (first.entry_lps, first.target_lps) == (suggested.skin_entry_lps, suggested.target_lps)
    assert ("(suggested, needle 1 of 2)" if same else "(needle 1 of 2)") in needle
    assert "(suggested)" not in needle
    if not same:
        assert "suggested" not in needle
    # the footnotes speak of exact surface clearances, not of a distance followed
    assert "beyond the distance followed" not in text
    assert "segmented surface" in text

"""The CT-MR fusion widget, for real: registration in a worker thread, nudges, lesion mapping.

Run with ``QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/pytest tests/test_gui_fusion.py``. The
phantom's MR is put on a grid moved by a known rigid transform; the widget must find it, and
the overlay it draws must then match the MR drawn straight on the CT grid.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if not os.environ.get("DISPLAY"):
    pytest.skip(
        "the fusion widget tests need an X display: run them under xvfb-run with"
        " QT_QPA_PLATFORM=xcb",
        allow_module_level=True,
    )

from PySide6.QtCore import Qt  # noqa: E402

from app.gui.views.fusion_view import FusionView, _slice_indices, sample_through  # noqa: E402
from imaging.fusion import MappedMask, RigidTransform  # noqa: E402
from imaging.labels import Label  # noqa: E402
from imaging.phantom import make_phantom  # noqa: E402
from imaging.volume import Volume  # noqa: E402

SPACING = (2.5, 2.5, 2.5)


def _moved(volume: Volume, transform: RigidTransform) -> Volume:
    """The same voxels on a grid moved so that anatomy at CT point p sits at MR point T(p)."""
    return Volume(
        array=volume.array,
        origin=transform.map_ct_to_mr(volume.origin),
        spacing=volume.spacing,
        direction=transform.rotation @ volume.direction,
        modality=volume.modality,
    )


@pytest.fixture(scope="module")
def ct():
    return make_phantom(modality="ct", spacing_mm=SPACING)


@pytest.fixture(scope="module")
def mr():
    return make_phantom(modality="mr", spacing_mm=SPACING, seed=3)


@pytest.fixture
def view(qtbot):
    w = FusionView()
    qtbot.addWidget(w)
    w.resize(1000, 650)
    w.show()
    yield w
    w.shutdown()


def _lesion_slice(ct) -> int:
    return int(round(ct.image.world_to_index(ct.truth.lesion.center_lps)[2]))


def test_registration_recovers_a_known_transform_and_the_overlay_aligns(qtbot, view, ct, mr):
    c = ct.truth.lesion.center_lps
    truth = RigidTransform.from_euler((2.0, -1.5, 4.0), (6.0, -5.0, 4.0), center_lps=c)
    view.set_ct(ct.image)
    view.set_mr(_moved(mr.image, truth))
    view.set_slice(_lesion_slice(ct))
    ijk = _slice_indices(ct.image, "axial", _lesion_slice(ct))
    reference = sample_through(mr.image, ct.image, RigidTransform.identity(), ijk)
    before = float(np.mean(np.abs(view.overlay_slice() - reference)))

    with qtbot.waitSignal(view.registered, timeout=180000) as sig:
        qtbot.mouseClick(view._register_btn, Qt.MouseButton.LeftButton)
        assert view.is_registering()
        assert not view._register_btn.isEnabled() and view._cancel_btn.isEnabled()
    found = sig.args[0]
    assert isinstance(found, RigidTransform)
    kji = np.argwhere(ct.labels.array == Label.SACRUM)
    pts = ct.labels.index_to_world(kji[:, ::-1].astype(float))
    err = np.linalg.norm(found.map_ct_to_mr(pts) - truth.map_ct_to_mr(pts), axis=1)
    assert err.max() < 1.5
    assert view.transform() is found
    assert view._progress.value() == 100 and "Registered" in view._status.text()
    after = float(np.mean(np.abs(view.overlay_slice() - reference)))
    assert after < 0.35 * before, (before, after)


def test_cancel_keeps_the_previous_alignment(qtbot, view, ct, mr):
    view.set_ct(ct.image)
    view.set_mr(_moved(mr.image, RigidTransform.from_euler((0, 0, 3.0), (5.0, 0.0, 0.0))))
    view.register()
    view.cancel()
    qtbot.waitUntil(lambda: not view.is_registering(), timeout=120000)
    assert "cancelled" in view._status.text()
    assert np.allclose(view.transform().rotation, np.eye(3))
    assert not view.transform().translation_mm.any()


def test_nudge_moves_the_overlay_by_the_expected_mm(qtbot, view, ct, mr):
    view.set_ct(ct.image)
    view.set_mr(mr.image)  # same patient frame: identity
    view.set_slice(_lesion_slice(ct))
    old = view.overlay_slice().copy()
    emitted = []
    view.registered.connect(emitted.append)
    for _ in range(5):  # +5 mm along x = 2 columns of 2.5 mm (axial: columns run along +x)
        qtbot.mouseClick(view.nudge_buttons["x+1 mm"], Qt.MouseButton.LeftButton)
    assert len(emitted) == 5
    assert view.transform().map_mr_to_ct(np.zeros(3)) == pytest.approx([5.0, 0.0, 0.0])
    new = view.overlay_slice()
    # anatomy shown at CT point p is now shown at p + 5 mm: new[:, i + 2] == old[:, i]
    assert np.allclose(new[:, 2:], old[:, :-2], atol=1e-3)
    assert not np.allclose(new, old, atol=1e-3)

    # keys: Down in an axial view moves the MR posterior (+y) by 1 mm
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Down)
    assert view.transform().map_mr_to_ct(np.zeros(3)) == pytest.approx([5.0, 1.0, 0.0])
    # Ctrl+Right rotates 1 degree about the axis through the screen (z)
    qtbot.keyClick(view, Qt.Key.Key_Right, Qt.KeyboardModifier.ControlModifier)
    assert view.transform().rotation_angle_deg == pytest.approx(1.0)
    assert view.transform().rotation[2, 2] == pytest.approx(1.0)


def test_mr_lesion_is_mapped_to_the_ct_with_its_volume_on_both(qtbot, view, ct):
    mr = make_phantom(modality="mr", spacing_mm=(2.0, 2.0, 3.0), seed=2)
    shift = RigidTransform.from_euler((0.0, 0.0, 0.0), (7.5, 0.0, 0.0))
    lesion = mr.labels.with_array((mr.labels.array == Label.LESION).astype(np.uint8))
    view.set_ct(ct.image)
    view.set_mr(_moved(mr.image, shift))
    view.set_transform(shift)
    with qtbot.waitSignal(view.mapped_lesion, timeout=30000) as sig:
        view.set_mr_lesion(_moved(lesion, shift))
    m = sig.args[0]
    assert isinstance(m, MappedMask)
    truth_ml = ct.truth.lesion.volume_ml
    assert m.volume_ml_mr == pytest.approx(truth_ml, rel=0.15)
    assert m.volume_ml_ct == pytest.approx(truth_ml, rel=0.15)
    # mapped onto the CT where the CT's own lesion is
    ct_lesion = ct.labels.array == Label.LESION
    got = m.mask.array != 0
    dice = 2 * np.count_nonzero(got & ct_lesion) / (got.sum() + ct_lesion.sum())
    assert dice > 0.7
    assert "mL on the MR" in view._lesion_label.text()
    # a nudge re-maps it (after a short delay), moved off the CT lesion
    with qtbot.waitSignal(view.mapped_lesion, timeout=30000) as sig:
        view.nudge_by(translation_mm=(10.0, 0.0, 0.0))
    moved = sig.args[0].mask.array != 0
    assert 2 * np.count_nonzero(moved & ct_lesion) / (moved.sum() + ct_lesion.sum()) < dice


def test_an_empty_mr_gives_a_clear_message(qtbot, view, ct, mr):
    view.set_ct(ct.image)
    view.set_mr(mr.image.with_array(np.zeros_like(mr.image.array)))
    with qtbot.waitSignal(view.failed, timeout=60000) as sig:
        view.register()
    assert "Registration failed" in sig.args[0] and "empty" in sig.args[0]
    assert not view.is_registering() and view._register_btn.isEnabled()

"""The "why?" panel: the lesion's Denis zone, each approach's result and the suggestion in words.

Made for teaching (shown first in teaching mode) and for anyone who wants to see why the
planner suggests what it does: the five approaches side by side, one column each, with their
best needle's numbers or the constraint that blocks them and by how many millimetres.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from app.gui.panels.common import Host, column, fmt_mm, hint_label, readout_label, title_label
from app.gui.theme import GREEN, RED, clearance_color
from planning.approaches import approach_registry
from planning.needles import get_needle
from planning.plan import Candidate, clearance_text

#: The five approaches, in the order the panel shows them (others a plan holds come after).
APPROACH_ORDER = (
    "transiliac",
    "interpedicular",
    "anterior_oblique",
    "posterior_short",
    "posterior_long",
)
#: Rows of the side-by-side table (one column per approach).
ROWS = ("Result", "Side", "Foramina", "Canal", "Bone ahead", "Reach (mm)", "Needle", "C-arm", "")
SHOW_ROW = len(ROWS) - 1
#: Rows whose text takes two lines (the rest take one).
TWO_LINE_ROWS = (0, 7)
#: Column headings that fit a narrow column.
SHORT_LABELS = {
    "transiliac": "Transiliac",
    "interpedicular": "Inter-\npedicular",
    "anterior_oblique": "Anterior\noblique",
    "posterior_short": "Posterior\nshort-axis",
    "posterior_long": "Posterior\nlong-axis",
}

#: Denis zones in plain words: where the lesion is and what that means for the needle.
ZONE_TEXT = {
    1: (
        "zone 1, the ala",
        "The lesion lies lateral to the sacral foramina, in the ala. The nerve roots in the "
        "foramina and the spinal canal are comparatively far, so several approaches can reach "
        "it: the cohort used anterior-oblique, transiliac or posterior needles here. The SI "
        "joint is the lateral neighbour; only the transiliac approach may cross it.",
    ),
    2: (
        "zone 2, the foramina",
        "The lesion reaches the sacral foramina, where the nerve roots run. A needle or "
        "cement in a foramen can injure a root, so the clearance to the foramina decides "
        "the approach; the cohort used posterior needles here.",
    ),
    3: (
        "zone 3, the sacral body",
        "The lesion lies medial to the foramina, in the sacral body in front of the spinal "
        "canal. Cement leaking backward reaches the canal, so the canal clearance matters "
        "most; the cohort used the interpedicular approach, between the pedicles into the "
        "body.",
    ),
}
FLAG_TEXT = {
    "diameter_over_30mm": "it is larger than 30 mm, beyond the lesions of the reference cohort",
    "foraminal_erosion": "it erodes a foramen through the cortex (a cohort exclusion)",
    "epidural_extension": "it reaches into the spinal canal (a cohort exclusion)",
}


def approach_order(keys: list[str]) -> list[str]:
    """``keys`` in the panel's column order: the five approaches first, then any others."""
    first = [k for k in APPROACH_ORDER if k in keys]
    return first + [k for k in keys if k not in first]


def _label(key: str) -> str:
    registry = approach_registry()
    return registry[key].label if key in registry else key.replace("_", " ")


def carm_short(cand: Candidate) -> str:
    """The bull's-eye view as two detector tilts for a prone patient (``"37° head\n18° right"``)."""
    if cand.c_arm is None:
        return "-"
    left, head = cand.c_arm.table_tilts_deg(patient_position="prone")
    return (
        f"{abs(head):.0f}\u00b0 {'head' if head >= 0 else 'feet'}\n"
        f"{abs(left):.0f}\u00b0 {'left' if left >= 0 else 'right'}"
    )


def candidate_sentence(cand: Candidate) -> str:
    """A best needle's numbers in words, clearances capped at the kernel's reach shown "≥"."""
    od, ex = cand.needle_od_mm, cand.clearance_mm.exact
    by = cand.clearance_mm.by_foramen
    if by:
        name = min(by, key=lambda k: by[k])
        foramen = f"{clearance_text(by[name], od, exact=ex)} from the {name} foramen"
    else:
        foramen = f"{clearance_text(cand.clearance_mm.foramina, od, exact=ex)} from the foramina"
    needle = get_needle(cand.needle)
    parts = [
        foramen,
        f"{clearance_text(cand.clearance_mm.canal, od, exact=ex)} from the canal",
        f"{fmt_mm(cand.tip_to_anterior_cortex_mm)} mm of bone ahead of the tip",
        f"{cand.skin_to_target_mm:.0f} mm from skin to tip with the {needle.label} "
        f"({needle.working_length_mm:.0f} mm reach)",
    ]
    return ", ".join(parts)


class WhyPanel(QWidget):
    """Why the plan is what it is: zone, the five approaches side by side, the suggestion."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self._host = host
        s = host.session
        lay = column(self)
        lay.addWidget(title_label("Why?"))
        lay.addWidget(
            hint_label(
                "What the planner found and why it suggests what it does. Click an approach's "
                "column (or its Show button) to see its needle in every view."
            )
        )
        box = QGroupBox("The lesion and its Denis zone")
        bl = column(box)
        self.zone = readout_label()
        self.zone.setObjectName("whyZone")
        bl.addWidget(self.zone)
        lay.addWidget(box)

        box = QGroupBox("The five approaches side by side")
        bl = column(box)
        self.table = QTableWidget(len(ROWS), 0)
        self.table.setObjectName("whyTable")
        self.table.setVerticalHeaderLabels(list(ROWS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectColumns)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(True)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.setToolTip(
            "Clearances in mm from the needle's surface ('\u2265' = at least: farther than the "
            "planner follows); bone ahead = bone left in front of the tip; C-arm = detector "
            "tilts for the bull's-eye view of a prone patient"
        )
        self.table.itemSelectionChanged.connect(self._on_column)
        bl.addWidget(self.table)
        self.approaches = readout_label()
        self.approaches.setObjectName("whyApproaches")
        bl.addWidget(self.approaches)
        lay.addWidget(box)

        box = QGroupBox("The suggestion")
        bl = column(box)
        self.suggestion = readout_label()
        self.suggestion.setObjectName("whySuggestion")
        bl.addWidget(self.suggestion)
        lay.addWidget(box)
        lay.addStretch(1)

        self._keys: list[str] = []
        self._updating = False
        self.show_buttons: dict[str, QPushButton] = {}
        s.plan_changed.connect(self.refresh)
        s.lesion_changed.connect(self.refresh)
        s.study_changed.connect(self.refresh)
        s.selection_changed.connect(self._show_selection)
        self.refresh()

    # -- display ---------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """The approaches in column order."""
        return list(self._keys)

    def refresh(self) -> None:
        """Rebuild the three parts from the session's lesion and plan."""
        s = self._host.session
        self.zone.setText(self._zone_html())
        plan = s.plan
        self._keys = approach_order(s.approach_keys()) if plan is not None else []
        self._fill_table()
        if plan is None:
            self.approaches.setText("Plan the trajectories (step 3) to compare the approaches.")
            self.suggestion.setText("-")
            return
        self.approaches.setText("<br>".join(self._approach_lines()))
        self.suggestion.setText(self._suggestion_html())
        self._show_selection(s.selected)

    def _lesion_data(self) -> dict[str, Any] | None:
        s = self._host.session
        if s.plan is not None and s.plan.lesion:
            return dict(s.plan.lesion)
        metrics = getattr(s.case, "metrics", None)
        return None if metrics is None else metrics.to_json()

    def _zone_html(self) -> str:
        lesion = self._lesion_data()
        if lesion is None:
            return "No lesion yet: find the anatomy (step 1) and click the lesion (step 2)."
        zone = lesion.get("denis_zone")
        head = (
            f"The lesion measures <b>{lesion['volume_ml']:.1f} mL</b>, "
            f"{lesion['max_diameter_mm']:.0f} mm across"
        )
        if zone not in ZONE_TEXT:
            return head + ". Its Denis zone is not known (the foramina were not found)."
        name, meaning = ZONE_TEXT[int(zone)]
        lines = [f"{head}, in Denis <b>{name}</b>.", html.escape(meaning)]
        zones_ml = lesion.get("zones_ml")
        if isinstance(zones_ml, dict):
            spread = [f"zone {z}: {float(v):.1f} mL" for z, v in sorted(zones_ml.items()) if v]
            if len(spread) > 1:
                lines.append("It spreads over more than one zone (" + ", ".join(spread) + ").")
        flags = lesion.get("flags") or {}
        warn = [text for key, text in FLAG_TEXT.items() if flags.get(key)]
        if warn:
            lines.append(
                "<span style='color:#f0b44c'>Take care: "
                + html.escape("; ".join(warn))
                + ".</span>"
            )
        return "<br>".join(lines)

    def _fill_table(self) -> None:
        s = self._host.session
        self._updating = True
        try:
            self.table.clearSelection()
            self.table.clearSpans()
            self.table.setColumnCount(len(self._keys))
            self.table.setHorizontalHeaderLabels(
                [SHORT_LABELS.get(k, _label(k).replace(" ", "\n", 1)) for k in self._keys]
            )
            self.show_buttons = {}
            sug = s.plan.suggestion if s.plan is not None else None
            for col, key in enumerate(self._keys):
                cand = s.candidate(key)
                suggested = sug is not None and sug.approach == key
                for row, (text, tip, color) in enumerate(self._cells(cand, key, suggested)):
                    item = QTableWidgetItem(text)
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                    if tip:
                        item.setToolTip(tip)
                    if color is not None:
                        item.setForeground(QColor.fromRgbF(*color))
                    self.table.setItem(row, col, item)
                if cand is None:
                    self.table.setSpan(1, col, SHOW_ROW - 1, 1)
                button = QPushButton("Show")
                button.setToolTip(f"Show the {_label(key)} needle in every view")
                button.setEnabled(cand is not None)
                button.clicked.connect(lambda _c=False, key=key: self.show_approach(key))
                self.table.setCellWidget(SHOW_ROW, col, button)
                self.show_buttons[key] = button
        finally:
            self._updating = False
        self._fit_table()

    def _cells(
        self, cand: Candidate | None, key: str, suggested: bool
    ) -> list[tuple[str, str, tuple[float, float, float] | None]]:
        s = self._host.session
        if cand is None:
            why = "; ".join(s.blocked_by(key)) or "no feasible needle"
            # the reason fills the column's number rows (a span, see _fill_table)
            first = why.split(";")[0].split(" (")[0]
            return [("\u2717\nblocked", why, RED), (first, why, None)] + [("", why, None)] * (
                len(ROWS) - 2
            )
        od = cand.needle_od_mm
        cl = cand.clearance_mm
        needle = get_needle(cand.needle)
        if cand.feasible:
            verdict = "\u2605\nsuggested" if suggested else "\u2713\nfeasible"
            colour = GREEN if suggested else clearance_color(_min_clearance(cand), True)
            why = "meets every margin"
        else:
            verdict, colour, why = "\u2717\nbreaks a margin", RED, "; ".join(cand.violations)
        nearest = ""
        if cl.by_foramen:
            nearest = min(cl.by_foramen, key=lambda k: cl.by_foramen[k])
        return [
            (verdict, why, colour),
            (cand.side or "-", "", None),
            (
                clearance_text(cl.foramina, od, exact=cl.exact),
                f"nearest: {nearest}" if nearest else "",
                None,
            ),
            (clearance_text(cl.canal, od, exact=cl.exact), "", None),
            (f"{fmt_mm(cand.tip_to_anterior_cortex_mm)} mm", "", None),
            (
                f"{cand.skin_to_target_mm:.0f}/{needle.working_length_mm:.0f}",
                "skin to tip / the needle's reach, mm",
                None,
            ),
            (cand.needle, needle.label, None),
            (carm_short(cand), cand.c_arm.text if cand.c_arm is not None else "", None),
            ("", "", None),
        ]

    def _fit_table(self) -> None:
        """Every row visible, no scrolling inside the table."""
        t = self.table
        line = t.fontMetrics().lineSpacing()
        for row in range(t.rowCount()):
            lines = 2 if row in TWO_LINE_ROWS else 1
            t.setRowHeight(row, lines * line + 10 if row != SHOW_ROW else line + 16)
        header = t.horizontalHeader()
        header.setMinimumHeight(2 * t.fontMetrics().height() + 10)
        height = header.sizeHint().height() + 2 * t.frameWidth() + 4
        height += sum(t.rowHeight(r) for r in range(t.rowCount()))
        t.setFixedHeight(height)

    def _approach_lines(self) -> list[str]:
        s = self._host.session
        plan = s.plan
        assert plan is not None
        sug = plan.suggestion
        reasons = list(sug.reasons) if sug is not None else []
        lines = []
        for key in self._keys:
            label = _label(key)
            cand = s.candidate(key)
            if cand is None:
                why = "; ".join(s.blocked_by(key)) or "no feasible needle"
                lines.append(
                    f"<span style='color:#f06b5a'>\u2717</span> <b>{html.escape(label)}</b>: no "
                    f"safe needle: {html.escape(why)}."
                )
                continue
            side = f" ({cand.side})" if cand.side else ""
            text = f"<b>{html.escape(label)}{side}</b>: {html.escape(candidate_sentence(cand))}"
            if not cand.feasible:
                text += ". <span style='color:#f06b5a'>Breaks a margin: "
                text += html.escape("; ".join(cand.violations)) + "</span>"
            elif sug is not None and sug.approach == key:
                text += ". <b>This is the suggestion.</b>"
            else:
                ranked = next((r for r in reasons if r.startswith(f"{label} feasible")), "")
                if ranked:
                    rest = ranked[len(label) :].split("(")[0].strip()
                    text += f"; {html.escape(rest)}"
                text += "."
            mark = "\u2713" if cand.feasible else "\u2717"
            colour = "#4cd964" if cand.feasible else "#f06b5a"
            lines.append(f"<span style='color:{colour}'>{mark}</span> {text}")
        return lines

    def _suggestion_html(self) -> str:
        s = self._host.session
        plan = s.plan
        assert plan is not None
        sug = plan.suggestion
        if sug is None or sug.approach is None:
            blocked = [
                f"&bull; {html.escape(_label(k))}: {html.escape('; '.join(s.blocked_by(k)))}"
                for k in self._keys
                if s.blocked_by(k)
            ]
            return "<br>".join(
                ["<b>No approach is feasible with these margins.</b> What blocks each:", *blocked]
            )
        cand = s.candidate(sug.approach)
        side = f" ({cand.side})" if cand is not None and cand.side else ""
        lines = [f"<b>{html.escape(_label(sug.approach))}{side}</b>, because:"]
        lines.extend(f"&bull; {html.escape(r)}" for r in sug.reasons)
        if cand is not None and cand.c_arm is not None:
            lines.append(f"C-arm: {html.escape(cand.c_arm.text)}")
        return "<br>".join(lines)

    # -- selection -------------------------------------------------------------------------------
    def show_approach(self, key: str) -> None:
        """Select approach ``key``: its needle is shown and focused in every view."""
        s = self._host.session
        if s.candidate(key) is None:
            why = "; ".join(s.blocked_by(key)) or "no feasible needle"
            s.message.emit(f"{_label(key)} has no needle to show: {why}")
            return
        self._host.run_guarded("Select", lambda: s.select(key))

    def _on_column(self) -> None:
        if self._updating:
            return
        cols = self.table.selectionModel().selectedColumns()
        if cols and 0 <= cols[0].column() < len(self._keys):
            self.show_approach(self._keys[cols[0].column()])

    def _show_selection(self, key: str) -> None:
        self._updating = True
        try:
            if key in self._keys:
                self.table.selectColumn(self._keys.index(key))
            else:
                self.table.clearSelection()
        finally:
            self._updating = False


def _min_clearance(cand: Candidate) -> float | None:
    values = [v for v in (cand.clearance_mm.foramina, cand.clearance_mm.canal) if v is not None]
    return min(values) if values else None

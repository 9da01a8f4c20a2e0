"""Entry point of the workstation: ``sacroplan gui [PATH | --sample [--lesion SITE]]``.

``run(argv)`` returns the exit code: 0 after a normal close, 2 for bad input (no display,
unknown options, a study that cannot be opened in a scripted run), 3 for an internal error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("sacroplan.gui")

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERNAL_ERROR = 0, 2, 3
DEFAULT_SAMPLE_SPACING = "1.5,1.5,1.5"


def display_problem() -> str | None:
    """Why Qt could not open a window here (None when it can).

    Qt aborts the whole process ("Fatal Python error: Aborted") when it finds no display;
    this check turns that into a message.
    """
    if os.environ.get("QT_QPA_PLATFORM"):
        return None
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return (
            "no display found (DISPLAY and WAYLAND_DISPLAY are not set): run the workstation "
            "in a desktop session, or under 'xvfb-run -a sacroplan gui ...' for a headless "
            "screenshot, or set QT_QPA_PLATFORM"
        )
    return None


def build_parser() -> argparse.ArgumentParser:
    """Options of the ``gui`` command (also used by ``app.cli``)."""
    from imaging.phantom import LESION_SITES

    p = argparse.ArgumentParser(prog="sacroplan gui", description="Open the workstation.")
    add_gui_arguments(p, tuple(LESION_SITES))
    return p


def add_gui_arguments(p: argparse.ArgumentParser, sites: tuple[str, ...]) -> None:
    """Add the workstation's options to a parser."""
    p.add_argument("path", nargs="?", help="study folder, DICOMDIR, image file, or plan .json")
    p.add_argument("--sample", action="store_true", help="open the built-in synthetic sample")
    p.add_argument("--lesion", default="left_ala_s1", choices=sites, help="sample lesion site")
    p.add_argument("--modality", default="ct", choices=("ct", "mr"), help="sample modality")
    p.add_argument(
        "--spacing", help=f"sample voxel size X,Y,Z in mm (default {DEFAULT_SAMPLE_SPACING})"
    )
    p.add_argument(
        "--auto",
        action="store_true",
        help="run anatomy, lesion (the sample's centre) and planning at once",
    )
    p.add_argument(
        "--screenshot",
        metavar="FILE.png",
        help="run the workflow as --auto, write a screenshot of the window, exit",
    )
    p.add_argument("--layout", choices=("1x1", "2x2", "1+3"), help="view layout")
    p.add_argument("--teaching", action="store_true", help="start in teaching mode")
    # Set by ``sacroplan --sample ...`` (the main command): without a display, plan headless.
    p.add_argument("--main-command", action="store_true", help=argparse.SUPPRESS)
    restore = p.add_mutually_exclusive_group()
    restore.add_argument(
        "--restore",
        action="store_true",
        help="restore an autosaved session after a crash without asking",
    )
    restore.add_argument(
        "--no-restore", action="store_true", help="never offer to restore an autosaved session"
    )


def _spacing(text: str | None) -> tuple[float, float, float]:
    from imaging.errors import SacroplanError

    text = text or DEFAULT_SAMPLE_SPACING
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 < v < 20 for v in values):
        raise SacroplanError(f"--spacing must be three positive numbers X,Y,Z in mm, got {text!r}")
    return values  # type: ignore[return-value]


def run(argv: Sequence[str] | None = None) -> int:
    """Start the workstation with command-line arguments; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return run_parsed(args)


def run_parsed(args: argparse.Namespace) -> int:
    """Start the workstation with parsed arguments (``sacroplan gui``); return the exit code."""
    from app.logs import setup_logging
    from imaging.errors import SacroplanError

    setup_logging()
    main_command = bool(getattr(args, "main_command", False))
    if main_command and not (args.path or args.restore):
        args.sample = True  # ``sacroplan --lesion SITE`` means the sample too
    problem = display_problem()
    if problem is not None and main_command:
        return run_headless(args)
    if problem is not None:
        sys.stderr.write(f"sacroplan: error: {problem}\n")
        return EXIT_USER_ERROR
    try:
        return _run(args)
    except SacroplanError as exc:
        sys.stderr.write(f"sacroplan: error: {exc}\n")
        return EXIT_USER_ERROR


def run_headless(args: argparse.Namespace) -> int:
    """The main command without a display: say so, then print what ``sacroplan plan`` prints.

    The window cannot open, so the user gets the same result in text: the lesion, the best
    needle of every approach, the suggestion and the cement (``sacroplan plan --sample``).
    """
    sys.stderr.write(
        "sacroplan: no display (DISPLAY and WAYLAND_DISPLAY are not set), so the workstation "
        "window cannot open; run it in a desktop session, or as 'xvfb-run -a sacroplan "
        "--sample --screenshot shot.png' for a picture. The plan in text follows.\n"
    )
    if not args.sample:
        sys.stderr.write(
            "sacroplan: error: a study needs the lesion's position to plan without the window: "
            f"run 'sacroplan plan {args.path or 'STUDY'} --seed X,Y,Z'\n"
        )
        return EXIT_USER_ERROR
    from app.cli import build_parser as cli_parser

    argv = ["plan", "--sample", "--lesion", args.lesion, "--modality", args.modality]
    if args.spacing:
        argv += ["--spacing", args.spacing]
    plan_args = cli_parser().parse_args(argv)
    code = int(plan_args.func(plan_args))
    sys.stdout.flush()
    if args.screenshot:
        sys.stderr.write(
            f"sacroplan: the screenshot {args.screenshot} was not written: there is no display\n"
        )
    return code


def _run(args: argparse.Namespace) -> int:
    from imaging.errors import SacroplanError

    if args.sample and args.path:
        raise SacroplanError("give either a study PATH or --sample, not both")
    if args.screenshot and not (args.sample or args.path or args.restore):
        raise SacroplanError("--screenshot needs a study: give PATH, --sample or --restore")
    spacing = _spacing(args.spacing)
    if args.path and not Path(args.path).exists():
        raise SacroplanError(f"no such file or folder: {args.path}")

    import vtkmodules.qt

    vtkmodules.qt.PyQtImpl = "PySide6"
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    from app.gui import autosave, errors
    from app.gui.main_window import MainWindow
    from app.gui.theme import apply_dark_theme

    app = QApplication.instance() or QApplication([sys.argv[0], "-name", "sacroplan"])
    app.setApplicationName("sacroplan")
    app.setOrganizationName("sacroplan")
    apply_dark_theme(app)
    scripted = bool(args.screenshot)
    errors.set_interactive(not scripted)
    crashed = None if args.no_restore else autosave.crashed_autosave()
    window = MainWindow()
    restore_hook = errors.install_excepthook(lambda: window)
    outcome = {"code": EXIT_OK}

    def fail(title: str, exc: object) -> None:
        if scripted:
            outcome["code"] = EXIT_USER_ERROR if isinstance(exc, SacroplanError) else 3
            window.close_without_prompt()

    window.session.error.connect(fail)
    if args.layout:
        window.set_layout(args.layout)
    if args.teaching:
        window.act_teaching.setChecked(True)
    window.show()

    def finish() -> None:
        if (args.auto or args.screenshot) and window.session.plan is not None:
            # the workflow's result in text too (as ``sacroplan plan`` prints it)
            from app.cli import _format_plan

            print(_format_plan(window.session.plan.to_json()), flush=True)
        if args.screenshot:
            QTimer.singleShot(1500, shoot)

    def shoot() -> None:
        app.processEvents()
        try:
            window.grid.render_all()
        except Exception:  # a renderer problem must not stop the screenshot of the rest
            log.exception("render before the screenshot failed")
        app.processEvents()
        window.save_window_screenshot(Path(args.screenshot))
        print(f"screenshot written to {args.screenshot}")
        window.close_without_prompt()

    def auto_after_open() -> None:
        if args.auto or args.screenshot:
            auto_workflow(window, on_done=finish)

    def start() -> None:
        if crashed is not None and _want_restore(window, args, QMessageBox):
            window.run_guarded("Restore", lambda: window.restore_autosave(crashed, on_done=finish))
            return
        if crashed is not None:
            _set_aside(crashed)
        if args.screenshot and not (args.sample or args.path):
            sys.stderr.write("sacroplan: error: there is no autosaved session to restore\n")
            outcome["code"] = EXIT_USER_ERROR
            window.close_without_prompt()
            return
        if args.sample:
            window.open_sample(
                args.lesion, spacing_mm=spacing, modality=args.modality, on_done=auto_after_open
            )
        elif args.path:
            p = Path(args.path)
            if p.suffix.lower() == ".json":
                window.run_guarded("Load plan", lambda: window.load_plan(p, on_done=finish))
            else:
                window.run_guarded(
                    "Open",
                    lambda: window.session.open_path(p, on_done=auto_after_open),
                )

    QTimer.singleShot(0, lambda: window.run_guarded("Start", start))
    try:
        code = app.exec()
    finally:
        restore_hook()
    return outcome["code"] if outcome["code"] != EXIT_OK else int(code)


def _want_restore(window: object, args: argparse.Namespace, box: type) -> bool:
    if args.restore:
        return True
    if args.screenshot:
        return False
    answer = box.question(
        window,
        "Restore the last session?",
        "sacroplan did not close normally last time. Restore the session it autosaved "
        "(study, anatomy edits, lesion, needles and plan)?",
    )
    return answer == box.StandardButton.Yes


def _set_aside(path: Path) -> None:
    """Keep a declined autosave next to the new one instead of overwriting it."""
    try:
        path.replace(path.with_name("session.declined.json"))
    except OSError as exc:
        log.warning("cannot set the old autosave aside: %s", exc)


def auto_workflow(window: object, *, on_done: Callable[[], None] | None = None) -> None:
    """Run anatomy, the lesion (from the sample's known centre) and planning in a row."""

    w = window
    s = w.session  # type: ignore[attr-defined]

    def lesion() -> None:
        seed = s.case.default_seed() if s.case is not None else None
        if seed is None:  # a real study: the lesion needs the user's click
            s.message.emit("Anatomy done: click a seed inside the lesion (step 2)")
            if on_done is not None:
                on_done()
            return
        w.run_guarded("Lesion", lambda: s.grow_lesion(seed, on_done=plan))  # type: ignore[attr-defined]

    def plan() -> None:
        w.steps.setCurrentIndex(2)  # type: ignore[attr-defined]
        w.run_guarded("Plan", lambda: w.run_plan(on_done))  # type: ignore[attr-defined]

    w.run_guarded("Anatomy", lambda: s.run_anatomy(on_done=lesion))  # type: ignore[attr-defined]

"""The sacroplan workstation: PySide6 windows and VTK views."""

"""Planning domain: anatomy model, approaches, trajectory scoring, suggestion, plan model.

Headless: imports neither PySide6 nor VTK rendering.
"""

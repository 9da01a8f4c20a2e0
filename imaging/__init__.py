"""Reading studies into volumes, segmentation and the built-in phantom.

Headless: imports neither PySide6 nor VTK rendering.
"""

"""sacroplan desktop application and command-line entry points (the only Qt/VTK layer)."""

__version__ = "0.1.0"

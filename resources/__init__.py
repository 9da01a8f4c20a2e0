"""Data files (presets, catalogues, templates, style sheets); read with importlib.resources."""

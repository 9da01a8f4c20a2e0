"""The workstation's views: linked slice views, a 3D view and needle views in one grid."""

from app.gui.views.grid import AblationDisplay, NeedleDisplay, ViewGrid

__all__ = ["AblationDisplay", "NeedleDisplay", "ViewGrid"]

"""The workstation's views: linked slice views, a 3D view and needle views in one grid."""

from app.gui.views.fluoro_view import FluoroView
from app.gui.views.fusion_view import FusionView
from app.gui.views.grid import AblationDisplay, NeedleDisplay, ViewGrid

__all__ = ["AblationDisplay", "FluoroView", "FusionView", "NeedleDisplay", "ViewGrid"]

"""Domain exceptions with messages a radiologist can act on."""


class SacroplanError(Exception):
    """Base class of every error sacroplan reports to the user.

    The message says what is wrong, with which file or series, and what to do.
    Front ends show it as is (a dialog, or one line on stderr) and never a traceback.
    """


class StudyReadError(SacroplanError):
    """A file, folder or series could not be read as an image volume."""


class SeriesGeometryError(StudyReadError):
    """A series is readable but its slices do not form one regular volume."""


class MemoryBudgetError(SacroplanError):
    """A study is larger than the configured memory budget."""


class LesionSegmentationError(SacroplanError):
    """A lesion could not be segmented from the user's seed (bad seed, band or a leak)."""


class PlanFileError(SacroplanError):
    """A file is not a readable sacroplan plan, or a plan could not be saved."""


class PlanningParameterError(SacroplanError, ValueError):
    """A planning parameter (margin, needle, device, lesion size) is unknown or out of range."""


class ResourceDataError(SacroplanError):
    """A data file shipped in ``resources/`` (catalogue, table, defaults) is missing or bad."""


class SegmentationError(SacroplanError):
    """Automatic anatomy could not be found; the user can place landmarks by hand."""


class OperationCancelledError(SacroplanError):
    """A long operation was cancelled by the user."""

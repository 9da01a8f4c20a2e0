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

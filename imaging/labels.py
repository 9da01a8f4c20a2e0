"""Label codes shared by segmentation, the phantom's truth and label-map exports."""

from enum import IntEnum


class Label(IntEnum):
    """Values of sacroplan's label maps (one label per voxel; the lesion wins over bone)."""

    BACKGROUND = 0
    SACRUM = 1
    LEFT_ILIUM = 2
    RIGHT_ILIUM = 3
    FORAMEN = 4
    CANAL = 5
    LESION = 6
    SI_JOINT = 7

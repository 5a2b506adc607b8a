"""Errors a user can cause. Each message names the file or value and the problem."""


class VosEmbedError(Exception):
    """Base class of every error napari-vosembed raises on purpose."""


class VideoReadError(VosEmbedError):
    """A video, frame folder, stack or mask file cannot be read."""


class PromptError(VosEmbedError, ValueError):
    """User input (points, boxes, masks) is empty, out of the frame or of the wrong shape."""


class MethodError(VosEmbedError, ValueError):
    """An unknown method, no method installed, or a method parameter out of its range."""


class ModelFileError(VosEmbedError):
    """A model file is missing, corrupt, or cannot be fetched."""


class Cancelled(VosEmbedError):
    """Long work was cancelled by the user."""


class DeviceError(VosEmbedError, ValueError):
    """An unknown device, or CUDA asked for where there is no GPU."""


class ResourceError(VosEmbedError):
    """A job would not fit in the memory available, or its files on the disk."""

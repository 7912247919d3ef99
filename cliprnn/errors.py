"""The exceptions cliprnn raises; each names the parameter, model or input at fault."""


class CaRError(Exception):
    """Base class of every error cliprnn raises on purpose."""


class ConfigError(CaRError, ValueError):
    """A configuration parameter is missing, unknown or out of range."""


class ModelLoadError(CaRError, RuntimeError):
    """A CLIP or SAM checkpoint could not be loaded (says which, where it looked, what to do)."""


class ImageError(CaRError, ValueError):
    """An input image is missing, empty, truncated or not an image."""


class QueryError(CaRError, ValueError):
    """The text queries are unusable (none left after normalisation, too many, wrong type)."""


class VideoError(ImageError):
    """A video file is missing, unreadable, truncated or holds no frame (names the file)."""


class CalibrationError(CaRError, ValueError):
    """Labelled samples, queries or search settings a calibration cannot use (names which)."""

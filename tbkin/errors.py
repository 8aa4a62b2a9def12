"""Errors users are meant to read: each names the file, record or key at fault."""


class TbkinError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class DataFormatError(TbkinError):
    """An annotation or data file is missing, malformed, or inconsistent."""


class UnsafePickleError(DataFormatError):
    """A pickle asked to load a global (class or function): possible code execution."""


class DownloadError(TbkinError):
    """A download was truncated, failed, or did not match its checksum."""


class BadImageError(TbkinError):
    """An image file could not be decoded."""

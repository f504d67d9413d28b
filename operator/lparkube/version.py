"""The running build's version, read from the installed distribution's metadata."""

from importlib import metadata


def version() -> str:
    """Return the installed lparkube version, so a source checkout never lies about it."""
    try:
        return metadata.version("lparkube")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"

"""tinlt: TIN (text-to-image network) for long-tailed image recognition."""

__version__ = "0.2.0"

from .errors import TinltError  # noqa: F401

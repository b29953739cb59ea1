"""The one exception the data pipeline raises, so a bad corpus fails before training starts."""

from scaling.console import UsageError


class DataError(UsageError):
    """The corpus or a split cannot serve the run; the message names the path or the sizes."""

"""The small exception hierarchy both programs raise.

The command-line entry points turn a ``TocsinError`` into one line on stderr and
an exit status (``ConfigError``: 2); any other exception reaching them is a bug.
"""


class TocsinError(Exception):
    """Base of every error tocsin reports to a human."""

    exit_status = 1


class ConfigError(TocsinError):
    """A bad flag, config file or key material: the program cannot start."""

    exit_status = 2


class WireError(TocsinError):
    """A message that breaks the wire contract (malformed, out of order, oversized)."""


class ResponseError(TocsinError):
    """A response action (suspend, isolate, webhook, hook) could not be carried out."""

"""Exceptions that carry a message meant for the person at the keyboard."""


class BillingError(Exception):
    """Base class: the message is safe to show (never holds secrets or card data)."""


class InvalidInput(BillingError):
    """User input was refused; nothing was written."""


class ConfigError(BillingError):
    """A setting is missing, unknown or has a bad value."""


class NotFound(BillingError):
    """A named record does not exist."""


class Conflict(BillingError):
    """The request clashes with existing state (duplicate reference, wrong state)."""


class ListenFailed(BillingError):
    """A server socket could not be opened (port in use, address not ours, no permission)."""

    def __init__(self, what: str, host: str, port: int, exc: OSError, setting: str = "") -> None:
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = f"; choose another with {setting}" if setting else ""
        super().__init__(f"{what} cannot listen on {host}:{port}: {reason}{hint}")

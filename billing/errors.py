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

"""plexo-billing: a recurring-billing scheduler for merchants on the Plexo gateway."""

__version__ = "0.1.0"

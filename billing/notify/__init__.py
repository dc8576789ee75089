"""Delivering the outbox: webhooks to the merchant, email to the customer (a daemon job)."""

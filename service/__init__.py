"""Fintegrate customer service, outbox relay and messaging."""

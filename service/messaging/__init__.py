"""Messaging: topology names, publisher, outbox relay, event consumer worker."""

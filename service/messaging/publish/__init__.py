"""Publish: the confirming publisher, the outbox relay and its partition leases."""

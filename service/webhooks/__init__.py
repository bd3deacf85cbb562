"""Webhooks (SPEC 8): endpoints, secrets, signed HTTP delivery in per-customer order."""

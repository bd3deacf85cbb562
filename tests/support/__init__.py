"""Test helpers shared across the suite (fault injection, factories)."""

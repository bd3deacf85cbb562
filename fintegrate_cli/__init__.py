"""The ``fintegrate`` operator CLI."""

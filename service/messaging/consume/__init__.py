"""Consume: the event worker, its per-customer lanes, receipts and poison handling."""

"""Delivery: republishing (resend / redeliver) and delivery receipts (confirm-delivery)."""

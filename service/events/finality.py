"""When an event is final: nothing will change it any more, so it may be archived.

The one place that says it for the queue channel. The webhook channel's pending
deliveries hold a partition back too: ``archive_plan.count_partition`` counts them as not
final (``service.webhooks.delivery.repository.pending_in_range``).
"""

from __future__ import annotations

# SQL over a customer_events row (no alias): published, and delivered or failed for good.
FINAL_EVENT = "(publish_status = 'published' AND deliver_status IN ('delivered', 'failed'))"
# Not final, but past the delivery expiry it becomes final (service/events/expiry.py):
# published and never confirmed. An event never published stays: that is the platform's
# own backlog, and the relay still owes it.
EXPIRABLE_EVENT = "(publish_status = 'published' AND deliver_status = 'pending')"

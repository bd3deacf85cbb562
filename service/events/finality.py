"""When an event is final: nothing will change it any more, so it may be archived.

The one place that says it. Another delivery channel (webhooks) that must also be final
before an event is archived adds its condition here, and the archive, the expiry and the
preview follow.
"""

from __future__ import annotations

# SQL over a customer_events row (no alias): published, and delivered or failed for good.
FINAL_EVENT = "(publish_status = 'published' AND deliver_status IN ('delivered', 'failed'))"
# Not final, but past the delivery expiry it becomes final (service/events/expiry.py):
# published and never confirmed. An event never published stays: that is the platform's
# own backlog, and the relay still owes it.
EXPIRABLE_EVENT = "(publish_status = 'published' AND deliver_status = 'pending')"

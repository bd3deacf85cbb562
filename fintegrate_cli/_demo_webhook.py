"""The demo's webhook channel: a loopback receiver and an endpoint on it for the demo tenant.

When the API refuses the endpoint (no FINTEGRATE_WEBHOOK_ENCRYPTION_KEY outside development,
loopback outside FINTEGRATE_WEBHOOK_ALLOWED_CIDRS, http outside development) the demo goes on
with the queue channel alone and says why.
"""

from __future__ import annotations

import contextlib

from fintegrate_cli._client import ApiClient, ApiError
from fintegrate_cli._demo_receiver import DemoReceiver, load_verifier

ENDPOINTS_PATH = "/webhooks/endpoints"


class DemoWebhook:
    """Receiver + endpoint; ``note`` says why there is none, when there is none."""

    def __init__(self) -> None:
        self.receiver: DemoReceiver | None = None
        self.endpoint_id: str | None = None
        self.note: str | None = None
        self.verifying = False

    def open(self, tenant: ApiClient) -> DemoWebhook:
        receiver = DemoReceiver().start()
        try:
            endpoint = tenant.post(ENDPOINTS_PATH, json={"url": receiver.url})
        except ApiError as exc:
            receiver.stop()
            self.note = f"webhooks skipped: {exc.description}"
            return self
        receiver.verifier = load_verifier(endpoint["secret"])
        self.verifying = receiver.verifier is not None
        self.receiver, self.endpoint_id = receiver, endpoint["endpoint_id"]
        return self

    def received(self) -> dict[str, bool]:
        """event_id -> signature verified, for every POST that arrived."""
        return self.receiver.received() if self.receiver is not None else {}

    def close(self, tenant: ApiClient) -> None:
        """Stop the receiver and delete the endpoint (nothing is left retrying)."""
        if self.endpoint_id is not None:
            with contextlib.suppress(ApiError):
                tenant.delete(f"{ENDPOINTS_PATH}/{self.endpoint_id}")
        if self.receiver is not None:
            self.receiver.stop()

"""The webhook delivery process: claims, signed POSTs, outcomes (`fintegrate webhooks deliver`)."""

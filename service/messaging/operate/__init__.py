"""Operate: provisioning, inspection, queue operations, DLQ replay, management API."""

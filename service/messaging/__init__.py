"""Messaging: the names (topology, messages, connection) and the publish, consume and
operate wings."""

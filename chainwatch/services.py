"""chainwatch: services."""

"""chainwatch: admin."""

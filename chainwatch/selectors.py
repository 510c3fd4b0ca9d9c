"""chainwatch: selectors."""

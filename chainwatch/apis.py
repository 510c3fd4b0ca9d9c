"""chainwatch: apis."""

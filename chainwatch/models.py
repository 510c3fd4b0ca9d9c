"""chainwatch: the EVM side (events, cursors, the lender transaction outbox)."""

"""loans: services."""

"""loans: admin."""

"""loans: models."""

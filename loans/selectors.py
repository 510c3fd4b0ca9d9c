"""loans: selectors."""

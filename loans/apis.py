"""loans: apis."""

"""bitcoin: selectors."""

"""bitcoin: services."""

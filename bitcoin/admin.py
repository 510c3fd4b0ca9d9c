"""bitcoin: admin."""

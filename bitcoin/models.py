"""bitcoin: models."""

"""bitcoin: apis."""

"""bitcoin: tasks."""

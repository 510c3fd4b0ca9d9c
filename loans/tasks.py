"""loans: tasks."""

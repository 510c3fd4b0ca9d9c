"""chainwatch: tasks."""

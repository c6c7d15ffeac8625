"""The task-agnostic training engine."""

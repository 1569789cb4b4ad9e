"""Todos: per-user tasks with keyset pagination, idempotent creation and change events."""

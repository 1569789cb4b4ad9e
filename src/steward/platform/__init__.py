"""Cross-cutting infrastructure: database, Redis, errors, logs, metrics, middleware, health."""

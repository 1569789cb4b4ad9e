"""Load benchmarks for Steward (`make bench`)."""

"""Steward: a production backend for mobile apps and AI agents."""

import os

__version__ = "0.1.0"

# With a multiprocess metrics folder, every process (API worker, Celery worker and pool
# process, beat) writes its figures to files there from its first metric on, which happens at
# import. Whoever set the variable, the folder must exist before that, in every role.
if _metrics_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(_metrics_dir, exist_ok=True)

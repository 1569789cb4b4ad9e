from tests.workers import worker

__all__ = ["worker"]

"""Notifications: live events to a user's devices over WebSocket and SSE."""

"""Accounts: users, roles and scopes, sessions and refresh tokens, API keys, admin."""

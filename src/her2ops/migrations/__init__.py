"""Alembic migration tree (one tree for PostgreSQL and SQLite)."""

"""Metadata database: typed models, Alembic migrations and the named queries."""

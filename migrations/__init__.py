"""Alembic migrations of the edit store (storage/models.py). A package so that they ship in the wheel:
the server applies them at every start (storage/migrate.py)."""

"""Persistence: the SQLAlchemy card store and its Alembic migrations, the JWT replay caches."""

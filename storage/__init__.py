"""Persistence: SQLAlchemy models, safetensors blobs, and the one repository module that pairs them."""

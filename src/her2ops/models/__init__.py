"""her2ops.models."""

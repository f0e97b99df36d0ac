"""her2ops.platform."""

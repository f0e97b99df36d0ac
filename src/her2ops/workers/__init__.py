"""her2ops.workers."""

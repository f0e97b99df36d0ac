"""her2ops.dashboards."""

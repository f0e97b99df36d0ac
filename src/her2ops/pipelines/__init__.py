"""her2ops.pipelines."""

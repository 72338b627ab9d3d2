"""Pure numpy kernels: no Spark here, so they are testable in milliseconds and reusable everywhere."""

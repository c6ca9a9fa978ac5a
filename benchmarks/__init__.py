"""shardq's benchmarks: scripts, and ``python -m benchmarks`` to run them all."""

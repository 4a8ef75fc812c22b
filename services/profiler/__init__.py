"""The profiler: measures a worker across clocks and batch shapes and fits a profile."""

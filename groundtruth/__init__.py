"""Ground truth: the GPU and model physics and the continuous-batching engine.

The emulated worker and the simulator run on it; controllers and routing policies never import it.
"""

"""voltana: SLO-aware, energy-efficient control plane for SGLang PD serving.

Map of the package, lowest layer first (each imports only the ones before it):

- ``voltana.schemas``: every bus message (msgspec Structs), the subject names, shared literals.
- ``voltana.common``: errors, logging, shutdown, ports.
- ``voltana.bus``: NATS client, embedded nats-server, NATS command-line options.
- ``voltana.gpu``: one GPU device interface for readings and clock setters.
- ``voltana.predictor``: latency/energy profiles fitted from measurements.
- ``voltana.groundtruth``: GPU and model physics, the continuous-batching engine.
- ``voltana.services``: telemetry, freqctl, actuator, profiler, router, emulator.
- ``voltana.sim``: discrete-event simulator and evaluation.
- ``voltana.tools``: the local cluster, replay, NATS helpers.
"""

__version__ = "0.1.0"

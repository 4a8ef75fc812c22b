"""voltana: SLO-aware, energy-efficient control plane for SGLang PD serving.

Map of the package:

- ``voltana.schemas``: every bus message (msgspec Structs) and the subject names.
- ``voltana.common``: bus client, embedded nats-server, logging, errors, config.
- ``voltana.services.emulator``: ground-truth GPU model, emulated GPU, emulated SGLang worker.
- ``voltana.services.telemetry``: NVML / emulated-GPU / SGLang metrics sources onto NATS.
- ``voltana.services.freqctl``: profiles (predictor), clock controllers, privileged actuator.
- ``voltana.services.router``: SGLang PD HTTP front and routing policies.
- ``voltana.sim``: discrete-event simulator and evaluation.
"""

__version__ = "0.1.0"

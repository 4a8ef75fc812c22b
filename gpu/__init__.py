"""GPU devices behind one interface: readings and clock setters (NVML, emulated, dry-run)."""

"""Infrastructure every layer may use: atomic writes, locks, torchrun, device/precision/seeds, and
lazy package exports."""

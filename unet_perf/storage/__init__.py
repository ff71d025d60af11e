"""Files of a run directory: atomic writes, checkpoints."""

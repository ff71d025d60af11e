"""One training run: graph assembly, the run loop, agreement between workers, run checkpoints, validation, probe, summaries, interrupts."""

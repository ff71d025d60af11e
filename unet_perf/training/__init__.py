"""One training run: graph assembly, the run loop and what each rank does in it, agreement between workers, run
checkpoints, validation, probe, summaries, interrupts."""

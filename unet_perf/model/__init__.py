"""The network and what trains it: U-Net, losses, optimizers, schedules, precision, weight averaging."""

"""The fleet simulator: many simulated robots, each running the real agent over the real HAL, per process."""

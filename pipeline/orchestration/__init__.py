"""Ray orchestration: Train fine-tuning units, the MagMax actor, Tune sweeps, the benchmark driver."""

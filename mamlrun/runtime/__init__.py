"""Run-time services every trainer shares and none of which knows MAML: checkpoints, metric
tracking, signal handling, progress bars, seeding, user-facing errors and glibc malloc tuning."""

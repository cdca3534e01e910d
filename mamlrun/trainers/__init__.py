"""Trainers, chosen by `cfg.domain.kind` through an explicit table (see `mamlrun.run`)."""

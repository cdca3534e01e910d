"""Training: the one loop (`loop.py`) and a recipe per kind (`supervised/`, `rl/`), chosen by
`cfg.domain.kind` through the table in `mamlrun.run`."""

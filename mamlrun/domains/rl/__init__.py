"""Meta-RL task families: 2D navigation (batched, no MuJoCo) and MuJoCo locomotion (gymnasium v5)."""

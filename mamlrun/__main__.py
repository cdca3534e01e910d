"""`python -m mamlrun ...` is the same as the `mamlrun` command."""

from mamlrun.cli import main

main()

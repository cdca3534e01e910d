"""`python -m mamlrun ...` is the same as the `mamlrun` command."""

from mamlrun.entry import main

main()

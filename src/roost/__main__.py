"""`python -m roost`: the same as the `roost` command."""

from roost.cli.entry import main

main()

"""The command line: click groups, the composition root that wires sockets, files and keys
(see ``roost.cli.main`` for the list of groups)."""

__all__: list[str] = []

"""fleet-supervisor: supervise workers on every node, coordinated through one SQL database."""

__version__ = "0.2.0.dev0"

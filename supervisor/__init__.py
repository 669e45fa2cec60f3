"""fleet-supervisor: supervise workers on every node, coordinated through one SQL database."""

__version__ = "0.1.0"

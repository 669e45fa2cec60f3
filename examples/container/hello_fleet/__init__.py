"""An example worker package for a derived fleet-supervisor image (examples/container/)."""

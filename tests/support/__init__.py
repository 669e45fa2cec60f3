"""Test harness pieces: a TCP proxy and a fleet of nodes for the fault tests; clocks
(a fake clock, a virtual-clock event loop) and the forward tick walk for unit tests."""

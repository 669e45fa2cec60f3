"""Test harness pieces shared by the fault tests: a TCP proxy and a fleet of nodes."""

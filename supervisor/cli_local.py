"""Commands for this node's workers, through the local control socket (issue 15)."""

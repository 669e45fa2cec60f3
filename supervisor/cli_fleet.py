"""Fleet-wide control commands, through the database (issue 15)."""

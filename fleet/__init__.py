"""``roomba-fleet``: the operator's command line (one module per sub-command)."""

"""Control kinds: how a target's server is stopped and started."""

"""cloudtutor."""

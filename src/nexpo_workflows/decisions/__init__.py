"""AI decisions: Claude chooses the next step of a support request from an allowed set."""

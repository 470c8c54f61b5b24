"""Copying one object from one cloud to the others, verified."""

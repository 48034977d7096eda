"""stacking stage."""

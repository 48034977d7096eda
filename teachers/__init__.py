"""teachers stage."""

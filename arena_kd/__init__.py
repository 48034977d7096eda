"""arena-kd: knowledge distillation + stacking for pairwise chatbot preference prediction."""

__version__ = "0.1.0"

LABELS = ("winner_model_a", "winner_model_b", "winner_tie")
"""Class order everywhere: 0 = A wins, 1 = B wins, 2 = tie."""

"""dt_eva: Decision Transformers on Meta-World with Explained Variance Adaptation."""

__version__ = "0.2.0"

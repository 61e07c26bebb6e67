"""MLflow -> Aim syncer: source (MLflow) -> mapping -> sink (Aim), with cursors in state."""

__version__ = "0.1.0"

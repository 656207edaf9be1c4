"""Package data: the DAP model's trained tensors and their model card (see model/shipped.py)."""

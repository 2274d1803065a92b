"""One ml_collections config per row of the paper's Table 3, plus `digits.py` (the demo)."""

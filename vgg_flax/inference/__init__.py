"""Using a trained model: top-k prediction on image files, and export (StableHLO, SavedModel)."""

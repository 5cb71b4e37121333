"""Model loading, layer access by name, and exact layer slices."""

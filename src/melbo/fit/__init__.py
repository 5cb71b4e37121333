"""Fitting algorithms (placeholder, finalised below)."""

"""Network definitions only (no training logic)."""

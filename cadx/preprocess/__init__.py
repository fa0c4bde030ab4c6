"""Resampling, label dilation, windowing and normalisation (seed 000, image preprocessing)."""

"""Readers and writers: NIfTI/2D images into `Case`, dataset layouts, atomic outputs."""

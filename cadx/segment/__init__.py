"""Automatic organ segmentation: a low-resolution 2.5D MONAI UNet that finds the organ on a raw CT,
so that diagnosis needs no hand-drawn mask."""

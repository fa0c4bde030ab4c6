"""Sliding-window patch extraction inside the dilated organ label, and patch labelling."""

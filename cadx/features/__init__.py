"""Features for classical classifiers: deep features taken from a CNN layer, handcrafted texture
features, and the SVM / random-forest classifiers and ensembles that use them (seed 004)."""

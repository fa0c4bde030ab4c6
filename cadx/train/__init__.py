"""Patient-level splits, the training loop, losses and callbacks."""

"""Scale-out: distributed batch scoring, DDP training, streamed patch stores."""

"""Pure functions on arrays: reconstruction losses, GAN objectives, likelihoods, image grids and contrastive views. No state, no I/O; they import nothing of dlu."""

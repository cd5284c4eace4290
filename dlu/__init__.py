"""dlu: deep learning, unsupervised. Autoencoders, VAEs, GANs and deep clustering in JAX."""

__version__ = "0.1.0"

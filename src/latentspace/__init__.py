"""latentspace: put images into the latent space of a frozen text embedding model."""

__version__ = "0.5.0"

"""The motion VQ-VAE, torch: the network, its weights and the codec between tokens and joints."""

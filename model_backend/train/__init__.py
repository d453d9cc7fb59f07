"""The demo model's data pipeline and training (issue 10).

numpy only for the data part (`bandai`, `dataset`, `label_checks`, `progress`); the
VQ-VAE training (`vq_train`) needs torch. Nothing here is imported by the backend at run
time: these modules rebuild the demo model from the public Bandai Namco dataset.
"""

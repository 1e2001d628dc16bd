"""Networks and losses only: the film VAE and the course's autoencoders and classifiers."""

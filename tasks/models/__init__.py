"""The networks tasks train (MLP, CNN, transformer LM, autoencoder) and their side of mu-P."""

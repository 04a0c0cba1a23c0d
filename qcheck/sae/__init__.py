"""The SAE measurement basis of the features analysis: the autoencoder and its trainer
(model.py), and one frozen basis per FP model, shipped, cached or trained (basis.py)."""

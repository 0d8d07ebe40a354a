"""PyTorch backend of sksae: the SAE module, its sparsifiers and the training loop.

Nothing in this package imports scikit-learn: validation and conventions belong to the
estimator layer, which hands this package plain tensors and reads plain tensors back.
"""

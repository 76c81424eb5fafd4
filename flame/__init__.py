"""The FLAME head model: assets, the torch layer and a synthetic FLAME-format model."""

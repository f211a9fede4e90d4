"""The torch half of the anomaly strategies: patch features, nearest-neighbour search, the models."""

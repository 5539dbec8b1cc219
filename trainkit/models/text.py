"""The text transformer: token embedding, positional encoding, pre-norm encoder, pooling."""

"""The sequence reader for CTC: convolutions, then a transformer, one output per step."""

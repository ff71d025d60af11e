"""Data: read and validate image/label pairs, the built-in synthetic set, train/validation splits."""

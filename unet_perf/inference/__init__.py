"""Using a trained model: overlap-tile prediction, metrics, panels."""

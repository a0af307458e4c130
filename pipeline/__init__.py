"""PixelRNN experiment pipeline."""

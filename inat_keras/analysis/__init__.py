"""What a trained model did: pictures and statistics made from its predictions (arrays in, files out)."""

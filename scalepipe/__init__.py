"""scalepipe."""

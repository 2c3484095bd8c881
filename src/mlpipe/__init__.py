"""mlpipe."""

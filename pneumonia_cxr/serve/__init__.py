"""The HTTP service and its page, a thin layer over `inference.Predictor`."""

"""scaling: run scaling-law experiments on language models."""

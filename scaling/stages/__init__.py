"""Run types. Each picks data, loss and initialisation for the shared loop in `scaling.train`."""

"""Results tables in, fitted scaling laws out; depends only on NumPy, pandas, SciPy, matplotlib."""

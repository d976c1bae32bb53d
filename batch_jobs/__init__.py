"""Ray Data jobs: route (and later generate and simulate) whole Parquet archives."""

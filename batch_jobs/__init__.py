"""Ray Data jobs over whole Parquet archives: route, generate, label and simulate."""

"""The pure core of rec_pipeline: no Dagster imports anywhere below this package."""

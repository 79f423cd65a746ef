"""Dagster layer: thin assets, checks, sensors and jobs over `rec_pipeline.core`."""

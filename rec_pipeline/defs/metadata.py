"""How frames look in the Dagster UI's metadata."""

import polars as pl


def markdown_table(frame: pl.DataFrame) -> str:
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True):
        return str(frame)

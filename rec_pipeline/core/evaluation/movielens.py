"""MovieLens loaders: the published layouts, auto-detected, turned into contract frames.

Three layouts are recognised in a folder:

- ``ml-100k``: GroupLens ``u.data`` (tab-separated, no header: user, item, rating, timestamp) and
  ``u.item`` (pipe-separated, latin-1, 5 fields then 19 binary genre flags);
- ``ml-latest`` (also ml-latest-small, ml-25m, ml-32m): ``ratings.csv``
  (``userId,movieId,rating,timestamp``) and ``movies.csv`` (``movieId,title,genres``, genres
  ``|``-separated, ``(no genres listed)`` meaning none);
- ``recbole``: RecBole atomic files ``<name>.inter`` and ``<name>.item`` (tab-separated, typed header
  such as ``user_id:token``; genres space-separated in ``class`` or ``genre``).

Every rating becomes one ``rating`` event in exactly ``EVENT_SCHEMA``; its ``event_id`` is
``ml-{user}-{item}-{timestamp}``, so the same rating gets the same id whichever layout it came
from. Movies become catalogue rows in exactly ``CATALOGUE_SCHEMA``. A genre of ``unknown``
(ml-100k's first flag) or ``(no genres listed)`` counts as no genre: ``categories`` is then ``[]``.

All parsing is vectorised with Polars readers and expressions, eagerly (no lazy/streaming collect,
so row order is never left to chance; events are sorted explicitly).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from rec_pipeline.core.ingest.contract import CATALOGUE_SCHEMA, EVENT_SCHEMA

__all__ = [
    "LAYOUTS",
    "ML100K_GENRES",
    "MovieLensData",
    "MovieLensError",
    "detect_layout",
    "load_movielens",
]

LAYOUTS: tuple[str, ...] = ("ml-100k", "ml-latest", "recbole")

ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_ML100K_ITEM_COLUMNS: tuple[str, ...] = (
    "item_id",
    "title",
    "release_date",
    "video_release_date",
    "imdb_url",
) + tuple(f"genre_{i}" for i in range(len(ML100K_GENRES)))

# Genre labels that mean "no genre" in some layout.
_NO_GENRE: tuple[str, ...] = ("", "(no genres listed)", "unknown")

# RecBole field names (the part before ":type") accepted for each role, first match wins.
_RECBOLE_INTER_FIELDS = {
    "user": ("user_id",),
    "item": ("item_id",),
    "rating": ("rating",),
    "timestamp": ("timestamp",),
}
_RECBOLE_ITEM_FIELDS = {
    "item": ("item_id",),
    "title": ("movie_title", "title"),
    "genres": ("class", "genre", "genres"),
}

_WHAT_WE_LOOK_FOR = (
    "u.data + u.item (ml-100k), ratings.csv + movies.csv (ml-latest / ml-25m / ml-32m), "
    "or <name>.inter + <name>.item (RecBole atomic files)"
)


class MovieLensError(ValueError):
    """A folder that holds no recognisable MovieLens layout, or a file that does not parse."""


@dataclass(frozen=True)
class MovieLensData:
    """One MovieLens copy as contract frames."""

    events: pl.DataFrame  # exactly EVENT_SCHEMA, sorted by (ts, user_id, item_id)
    items: pl.DataFrame  # exactly CATALOGUE_SCHEMA
    layout: str  # one of LAYOUTS


# --------------------------------------------------------------------------------------------
# detection


def _resolve(path: Path) -> tuple[Path, Path | None]:
    """(folder, the file the caller pointed at, if any)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path, None
    if path.is_file():
        return path.parent, path
    raise MovieLensError(f"MovieLens path {str(path)!r} does not exist")


def _recbole_inter(folder: Path, chosen: Path | None) -> Path | None:
    """The RecBole ``<name>.inter`` file to read, or None when the folder has none."""
    if chosen is not None and chosen.suffix == ".inter":
        return chosen
    candidates = sorted(p for p in folder.glob("*.inter") if p.is_file())
    if not candidates:
        return None
    # ``<name>.train.inter`` etc. are RecBole's benchmark splits, not the whole data set.
    whole = [p for p in candidates if "." not in p.stem]
    named = [p for p in whole if p.stem == folder.name]
    if named:
        return named[0]
    if len(whole) == 1:
        return whole[0]
    if not whole:
        raise MovieLensError(
            f"{str(folder)!r} holds only RecBole split files "
            f"({', '.join(p.name for p in candidates)}); expected a whole <name>.inter"
        )
    raise MovieLensError(
        f"{str(folder)!r} holds several RecBole .inter files "
        f"({', '.join(p.name for p in whole)}); pass the path of the one to load"
    )


def _detect(folder: Path, chosen: Path | None) -> str:
    if chosen is not None:
        if chosen.name in ("u.data", "u.item"):
            return "ml-100k"
        if chosen.name in ("ratings.csv", "movies.csv"):
            return "ml-latest"
        if chosen.suffix in (".inter", ".item"):
            return "recbole"
    if (folder / "u.data").is_file():
        return "ml-100k"
    if (folder / "ratings.csv").is_file():
        return "ml-latest"
    if _recbole_inter(folder, None) is not None:
        return "recbole"
    raise MovieLensError(f"no MovieLens data found in {str(folder)!r}: looked for {_WHAT_WE_LOOK_FOR}")


def detect_layout(folder: Path) -> str:
    """The layout of a MovieLens copy: ``"ml-100k"``, ``"ml-latest"`` or ``"recbole"``.

    ``folder`` may also be the path of one of the data files. Raises ``MovieLensError`` naming the
    files looked for when nothing matches.
    """
    return _detect(*_resolve(folder))


# --------------------------------------------------------------------------------------------
# shared conversion


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MovieLensError(f"{what}: {str(path)!r} is missing")
    return path


def _read_text_table(path: Path, **kwargs) -> pl.DataFrame:
    """Read a delimited file with every column as String (ids stay exactly as written)."""
    try:
        return pl.read_csv(path, infer_schema=False, **kwargs)
    except pl.exceptions.PolarsError as exc:
        raise MovieLensError(f"cannot parse {str(path)!r}: {exc}") from exc


def _events(raw: pl.DataFrame, source: Path) -> pl.DataFrame:
    """Contract events from String columns ``user``, ``item``, ``rating``, ``timestamp``."""
    text = raw.select(pl.col("user", "item", "rating", "timestamp").str.strip_chars())
    try:
        typed = text.with_columns(
            pl.col("rating").cast(pl.Float64).alias("value"),
            pl.col("timestamp").cast(pl.Float64).alias("ts_s"),
        )
    except pl.exceptions.PolarsError as exc:
        raise MovieLensError(f"{str(source)!r}: a rating or timestamp is not a number ({exc})") from exc

    bad = typed.filter(
        pl.any_horizontal(
            pl.col("user").is_null() | (pl.col("user") == ""),
            pl.col("item").is_null() | (pl.col("item") == ""),
            pl.col("value").is_null() | pl.col("value").is_nan(),
            pl.col("ts_s").is_null() | pl.col("ts_s").is_nan(),
        )
    )
    if bad.height:
        raise MovieLensError(
            f"{str(source)!r}: {bad.height} rating row(s) lack a user, item, rating or timestamp"
        )

    whole_seconds = pl.col("ts_s") == pl.col("ts_s").floor()
    ts_token = (
        pl.when(whole_seconds)
        .then(pl.col("ts_s").cast(pl.Int64).cast(pl.String))
        .otherwise(pl.col("timestamp"))
    )
    events = typed.select(
        pl.format("ml-{}-{}-{}", pl.col("user"), pl.col("item"), ts_token).alias("event_id"),
        pl.col("user").alias("user_id"),
        pl.col("item").alias("item_id"),
        pl.lit("rating", dtype=pl.String).alias("event_type"),
        pl.from_epoch((pl.col("ts_s") * 1_000_000).round().cast(pl.Int64), time_unit="us")
        .dt.replace_time_zone("UTC")
        .alias("ts"),
        pl.col("value"),
        pl.lit(None, dtype=pl.String).alias("session_id"),
        pl.lit(None, dtype=pl.String).alias("context"),
    )
    events = events.sort(["ts", "user_id", "item_id"], maintain_order=True)
    return events.cast(EVENT_SCHEMA).select(list(EVENT_SCHEMA))


def _clean_genres(genres: pl.Expr) -> pl.Expr:
    """A List(String) of genres without blanks or the 'no genre' labels (null list -> [])."""
    cleaned = genres.list.eval(pl.element().str.strip_chars()).list.filter(
        pl.element().is_in(list(_NO_GENRE)).not_() & pl.element().is_not_null()
    )
    return cleaned.fill_null(pl.lit([], dtype=pl.List(pl.String)))


def _items(frame: pl.DataFrame) -> pl.DataFrame:
    """Catalogue rows from ``item_id`` (String), ``title`` (String), ``categories`` (List)."""
    items = frame.select(
        pl.col("item_id").str.strip_chars(),
        pl.col("title").str.strip_chars(),
        _clean_genres(pl.col("categories")).alias("categories"),
    )
    if items["item_id"].null_count():
        raise MovieLensError("a movie row has no id")
    return items.cast(CATALOGUE_SCHEMA).select(list(CATALOGUE_SCHEMA))


# --------------------------------------------------------------------------------------------
# layouts


def _load_ml100k(folder: Path) -> MovieLensData:
    ratings_path = _need(folder / "u.data", "ml-100k ratings (u.data)")
    items_path = _need(folder / "u.item", "ml-100k movies (u.item)")

    raw = _read_text_table(
        ratings_path,
        has_header=False,
        separator="\t",
        quote_char=None,
        new_columns=["user", "item", "rating", "timestamp"],
    )
    if raw.width != 4:
        raise MovieLensError(f"{str(ratings_path)!r}: expected 4 tab-separated fields, found {raw.width}")

    # GroupLens ships u.item as latin-1; accept a re-saved UTF-8 copy as well.
    data = items_path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        data = data.decode("latin-1").encode("utf-8")
    if data.strip():
        movies = _read_text_table(
            io.BytesIO(data),
            has_header=False,
            separator="|",
            quote_char=None,
            empty_string_is_null=False,
            new_columns=list(_ML100K_ITEM_COLUMNS),
        )
    else:
        movies = pl.DataFrame(schema=dict.fromkeys(_ML100K_ITEM_COLUMNS, pl.String))
    if movies.width != len(_ML100K_ITEM_COLUMNS):
        raise MovieLensError(
            f"{str(items_path)!r}: expected {len(_ML100K_ITEM_COLUMNS)} pipe-separated fields "
            f"(5 + 19 genre flags), found {movies.width}"
        )
    flags = [
        pl.when(pl.col(f"genre_{i}").str.strip_chars() == "1").then(pl.lit(name))
        for i, name in enumerate(ML100K_GENRES)
    ]
    movies = movies.select(
        "item_id",
        "title",
        pl.concat_list(flags).list.drop_nulls().alias("categories"),
    )
    return MovieLensData(events=_events(raw, ratings_path), items=_items(movies), layout="ml-100k")


def _load_ml_latest(folder: Path) -> MovieLensData:
    ratings_path = _need(folder / "ratings.csv", "ml-latest ratings (ratings.csv)")
    items_path = _need(folder / "movies.csv", "ml-latest movies (movies.csv)")

    raw = _read_text_table(ratings_path, columns=["userId", "movieId", "rating", "timestamp"])
    raw = raw.rename({"userId": "user", "movieId": "item"})
    movies = _read_text_table(items_path, columns=["movieId", "title", "genres"], empty_string_is_null=False)
    movies = movies.select(
        pl.col("movieId").alias("item_id"),
        "title",
        pl.col("genres").str.strip_chars().str.split("|").alias("categories"),
    )
    return MovieLensData(events=_events(raw, ratings_path), items=_items(movies), layout="ml-latest")


def _recbole_table(path: Path, fields: dict[str, tuple[str, ...]]) -> pl.DataFrame:
    """A RecBole atomic file with the wanted fields renamed to their role names."""
    frame = _read_text_table(path, separator="\t", quote_char=None, empty_string_is_null=False)
    by_name = {column.split(":", 1)[0].strip(): column for column in frame.columns}
    selected = {}
    for role, names in fields.items():
        column = next((by_name[n] for n in names if n in by_name), None)
        if column is None:
            raise MovieLensError(
                f"{str(path)!r}: no {' / '.join(names)} field in header {frame.columns}"
            )
        selected[role] = pl.col(column)
    return frame.select(expr.alias(role) for role, expr in selected.items())


def _load_recbole(folder: Path, chosen: Path | None) -> MovieLensData:
    if chosen is not None and chosen.suffix == ".item":
        inter_path: Path | None = chosen.with_suffix(".inter")
    else:
        inter_path = _recbole_inter(folder, chosen)
    if inter_path is None:
        raise MovieLensError(f"no RecBole <name>.inter file in {str(folder)!r}")
    inter_path = _need(inter_path, "RecBole interactions (<name>.inter)")
    items_path = _need(inter_path.with_suffix(".item"), "RecBole movies (<name>.item)")

    raw = _recbole_table(inter_path, _RECBOLE_INTER_FIELDS)
    movies = _recbole_table(items_path, _RECBOLE_ITEM_FIELDS).select(
        pl.col("item").alias("item_id"),
        "title",
        pl.col("genres").str.strip_chars().str.split(" ").alias("categories"),
    )
    return MovieLensData(events=_events(raw, inter_path), items=_items(movies), layout="recbole")


def load_movielens(folder: Path) -> MovieLensData:
    """Load a MovieLens copy (folder, or the path of one of its files) as contract frames."""
    folder, chosen = _resolve(folder)
    layout = _detect(folder, chosen)
    if layout == "ml-100k":
        return _load_ml100k(folder)
    if layout == "ml-latest":
        return _load_ml_latest(folder)
    return _load_recbole(folder, chosen)

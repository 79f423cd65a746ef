"""MovieLens loaders: synthetic fixtures of every layout, plus the real ml-100k copy when present."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rec_pipeline.core.evaluation.movielens import (
    MovieLensData,
    MovieLensError,
    detect_layout,
    load_movielens,
)
from rec_pipeline.core.ingest.contract import CATALOGUE_SCHEMA, EVENT_SCHEMA

REAL_ML100K = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "movielens-100k"

# (user, item, rating, unix seconds), deliberately out of time order, with a timestamp tie.
RATINGS = [
    (196, 242, 3, 881250949),
    (186, 302, 3, 891717742),
    (22, 377, 1, 878887116),
    (244, 51, 2, 880606923),
    (166, 346, 1, 886397596),
    (3, 242, 4, 881250949),  # ties with the first row; string order puts "196" before "3"
]


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _expected_events(ratings=RATINGS, *, value_scale: float = 1.0) -> pl.DataFrame:
    rows = sorted(ratings, key=lambda r: (r[3], str(r[0]), str(r[1])))
    return pl.DataFrame(
        {
            "event_id": [f"ml-{u}-{i}-{t}" for u, i, _, t in rows],
            "user_id": [str(u) for u, *_ in rows],
            "item_id": [str(i) for _, i, *_ in rows],
            "event_type": ["rating"] * len(rows),
            "ts": [_utc(t) for *_, t in rows],
            "value": [float(r) * value_scale for _, _, r, _ in rows],
            "session_id": [None] * len(rows),
            "context": [None] * len(rows),
        },
        schema=EVENT_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------
# fixtures: one tiny folder per layout


def _flags(*genres: int) -> str:
    return "|".join("1" if i in genres else "0" for i in range(19))


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    lines = [
        # Comedy (5) + Romance (14)
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{_flags(5, 14)}",
        # latin-1 title; Drama (8) + Musical (12)
        f"302|Misérables, Les (1995)|01-Jan-1995||http://x|{_flags(8, 12)}",
        # only the "unknown" flag -> no categories
        f"377|unknown|||http://x|{_flags(0)}",
        # no flags at all
        f"51|Legends of the Fall (1994)|01-Jan-1994||http://x|{_flags()}",
        # Action (1), Sci-Fi (15), Western (18): first, late and last flag
        f"346|Jackie Brown (1997)|01-Jan-1997||http://x|{_flags(1, 15, 18)}",
    ]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


ML100K_ITEMS = pl.DataFrame(
    {
        "item_id": ["242", "302", "377", "51", "346"],
        "title": [
            "Kolya (1996)",
            "Misérables, Les (1995)",
            "unknown",
            "Legends of the Fall (1994)",
            "Jackie Brown (1997)",
        ],
        "categories": [
            ["Comedy", "Romance"],
            ["Drama", "Musical"],
            [],
            [],
            ["Action", "Sci-Fi", "Western"],
        ],
    },
    schema=CATALOGUE_SCHEMA,
)


@pytest.fixture
def ml_latest_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    ratings = [(u, i, r / 2, t) for u, i, r, t in RATINGS]  # half stars: 1.5, 0.5, ...
    text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in ratings)
    (folder / "ratings.csv").write_text(text)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "242,Kolya (1996),Comedy|Romance\n"
        '302,"Misérables, Les (1995)",Drama|Musical\n'
        '377,"Thing Called ""Love"", The (1993)",(no genres listed)\n'
        "51,Legends of the Fall (1994),Drama\n",
        encoding="utf-8",
    )
    return folder


ML_LATEST_ITEMS = pl.DataFrame(
    {
        "item_id": ["242", "302", "377", "51"],
        "title": [
            "Kolya (1996)",
            "Misérables, Les (1995)",
            'Thing Called "Love", The (1993)',
            "Legends of the Fall (1994)",
        ],
        "categories": [["Comedy", "Romance"], ["Drama", "Musical"], [], ["Drama"]],
    },
    schema=CATALOGUE_SCHEMA,
)


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "movielens-100k"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    )
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy Romance\n"
        "302\tMisérables, Les\t1995\tDrama Musical\n"
        "377\tunknown\t\tunknown\n"
        '51\tLegends of the "Fall"\t1994\tDrama\n',
        encoding="utf-8",
    )
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\n196\t49\n")
    return folder


RECBOLE_ITEMS = pl.DataFrame(
    {
        "item_id": ["242", "302", "377", "51"],
        "title": ["Kolya", "Misérables, Les", "unknown", 'Legends of the "Fall"'],
        "categories": [["Comedy", "Romance"], ["Drama", "Musical"], [], ["Drama"]],
    },
    schema=CATALOGUE_SCHEMA,
)


# ---------------------------------------------------------------------------------------------
# detection


def test_detect_each_layout(ml100k_dir: Path, ml_latest_dir: Path, recbole_dir: Path) -> None:
    assert detect_layout(ml100k_dir) == "ml-100k"
    assert detect_layout(ml_latest_dir) == "ml-latest"
    assert detect_layout(recbole_dir) == "recbole"


def test_detect_accepts_a_rating_file(ml100k_dir: Path, ml_latest_dir: Path, recbole_dir: Path) -> None:
    assert detect_layout(ml100k_dir / "u.data") == "ml-100k"
    assert detect_layout(ml_latest_dir / "ratings.csv") == "ml-latest"
    assert detect_layout(recbole_dir / "ml-100k.inter") == "recbole"


def test_empty_folder_raises_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MovieLensError, match=r"u\.data.*ratings\.csv.*\.inter") as info:
        detect_layout(tmp_path)
    assert isinstance(info.value, ValueError)
    with pytest.raises(MovieLensError, match="no MovieLens data found"):
        load_movielens(tmp_path)


def test_unknown_folder_raises_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::2::3::4\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(MovieLensError, match="looked for"):
        detect_layout(tmp_path)


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(MovieLensError, match="does not exist"):
        load_movielens(tmp_path / "nope")


def test_missing_movies_file_is_named(ml_latest_dir: Path) -> None:
    (ml_latest_dir / "movies.csv").unlink()
    with pytest.raises(MovieLensError, match="movies.csv"):
        load_movielens(ml_latest_dir)


def test_recbole_prefers_the_whole_file_over_splits(recbole_dir: Path) -> None:
    (recbole_dir / "ml-100k.train.inter").write_text("user_id:token\titem_id:token\n")
    data = load_movielens(recbole_dir)
    assert data.events.height == len(RATINGS)


# ---------------------------------------------------------------------------------------------
# loading


def _check_contract(data: MovieLensData) -> None:
    assert data.events.schema == pl.Schema(EVENT_SCHEMA)
    assert data.items.schema == pl.Schema(CATALOGUE_SCHEMA)
    sorted_events = data.events.sort(["ts", "user_id", "item_id"], maintain_order=True)
    assert_frame_equal(data.events, sorted_events)
    assert data.events["event_id"].is_unique().all()


def test_load_ml100k(ml100k_dir: Path) -> None:
    data = load_movielens(ml100k_dir)
    assert data.layout == "ml-100k"
    _check_contract(data)
    assert_frame_equal(data.events, _expected_events())
    assert_frame_equal(data.items, ML100K_ITEMS)


def test_load_ml100k_accepts_utf8_item_file(ml100k_dir: Path) -> None:
    text = (ml100k_dir / "u.item").read_bytes().decode("latin-1")
    (ml100k_dir / "u.item").write_text(text, encoding="utf-8")
    assert_frame_equal(load_movielens(ml100k_dir).items, ML100K_ITEMS)


def test_load_ml_latest(ml_latest_dir: Path) -> None:
    data = load_movielens(ml_latest_dir / "ratings.csv")
    assert data.layout == "ml-latest"
    _check_contract(data)
    assert_frame_equal(data.events, _expected_events(value_scale=0.5))
    assert_frame_equal(data.items, ML_LATEST_ITEMS)


def test_load_recbole(recbole_dir: Path) -> None:
    data = load_movielens(recbole_dir)
    assert data.layout == "recbole"
    _check_contract(data)
    assert_frame_equal(data.events, _expected_events())
    assert_frame_equal(data.items, RECBOLE_ITEMS)


def test_sort_order_is_ts_then_string_ids(recbole_dir: Path) -> None:
    events = load_movielens(recbole_dir).events
    assert events["user_id"].to_list() == ["22", "244", "196", "3", "166", "186"]
    assert events["ts"].is_sorted()


def test_event_ids_are_stable_across_layouts(
    ml100k_dir: Path, ml_latest_dir: Path, recbole_dir: Path
) -> None:
    ids = [load_movielens(d).events["event_id"] for d in (ml100k_dir, ml_latest_dir, recbole_dir)]
    assert ids[0].to_list() == ids[1].to_list() == ids[2].to_list()


def test_recbole_float_timestamps(recbole_dir: Path) -> None:
    (recbole_dir / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t4.5\t881250949.0\n"
    )
    events = load_movielens(recbole_dir).events
    assert events["event_id"].to_list() == ["ml-1-2-881250949"]
    assert events["ts"].to_list() == [_utc(881250949)]
    assert events["value"].to_list() == [4.5]


def test_non_numeric_rating_raises(ml100k_dir: Path) -> None:
    (ml100k_dir / "u.data").write_text("1\t2\tfive\t881250949\n")
    with pytest.raises(MovieLensError, match="u.data"):
        load_movielens(ml100k_dir)


def test_result_is_frozen(recbole_dir: Path) -> None:
    data = load_movielens(recbole_dir)
    with pytest.raises(AttributeError):
        data.layout = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# the real MovieLens-100K copy (RecBole layout), never copied into the repo


@pytest.fixture(scope="module")
def real_ml100k() -> MovieLensData:
    if not REAL_ML100K.is_dir():
        pytest.skip(f"MovieLens-100K not found at {REAL_ML100K} (see ../shared/datasets/README.md)")
    return load_movielens(REAL_ML100K)


@pytest.mark.movielens
def test_real_ml100k_counts(real_ml100k: MovieLensData) -> None:
    data = real_ml100k
    assert data.layout == "recbole"
    _check_contract(data)
    assert data.events.height == 100_000
    assert data.events["user_id"].n_unique() == 943
    assert data.events["item_id"].n_unique() == 1_682
    assert data.items.height == 1_682
    assert set(data.events["item_id"].unique()) == set(data.items["item_id"])
    assert data.events["value"].min() == 1.0 and data.events["value"].max() == 5.0
    assert set(data.events["value"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert data.events["ts"].min() == datetime(1997, 9, 20, 3, 5, 10, tzinfo=timezone.utc)
    assert data.events["ts"].max().year == 1998


@pytest.mark.movielens
def test_real_ml100k_genres(real_ml100k: MovieLensData) -> None:
    items = real_ml100k.items
    toy_story = items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy_story["title"] == "Toy Story"
    assert toy_story["categories"] == ["Animation", "Children's", "Comedy"]
    genres = set(items["categories"].explode().drop_nulls())
    assert {"Film-Noir", "Sci-Fi", "Children's", "Western"} <= genres
    assert len(genres) == 18  # the 19 ml-100k genres minus "unknown"
    assert items.filter(pl.col("categories").list.len() == 0).height == 2
    assert items.filter(pl.col("title").str.contains("é")).height > 0


@pytest.mark.movielens
def test_real_ml100k_same_events_in_every_layout(real_ml100k: MovieLensData, tmp_path: Path) -> None:
    """Rewrite the real ratings as u.data and ratings.csv (in tmp only) and reload them."""
    ev = real_ml100k.events.select(
        "user_id", "item_id", pl.col("value").cast(pl.Int64), pl.col("ts").dt.epoch("s")
    )
    u = tmp_path / "u"
    u.mkdir()
    ev.write_csv(u / "u.data", separator="\t", include_header=False)
    (u / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|" + _flags(3, 4, 5) + "\n")
    latest = tmp_path / "latest"
    latest.mkdir()
    ev.rename({"user_id": "userId", "item_id": "movieId", "value": "rating", "ts": "timestamp"}).write_csv(
        latest / "ratings.csv"
    )
    (latest / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    assert_frame_equal(load_movielens(u).events, real_ml100k.events)
    assert_frame_equal(load_movielens(latest).events, real_ml100k.events)

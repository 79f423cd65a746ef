"""The process the crash-safety test kills (`test_crash_safety.py`): lands each file given, marks
its batch passed (the landing job's verdict on a clean batch), and refreshes after each, printing a
marker before every step. Run again on the same files, it completes whatever a killed run left.

    python rec_pipeline_tests/crash_driver.py HOME FILE...
"""

import sys
from pathlib import Path

from rec_pipeline.core.ingest.landing import land_file
from rec_pipeline.core.model.config import RefreshConfig
from rec_pipeline.core.model.ranking import RankerConfig
from rec_pipeline.core.model.refresh import refresh
from rec_pipeline.core.model.registry import ModelRegistry
from rec_pipeline.settings import Settings

CONFIG = RefreshConfig(ranker=RankerConfig(rounds=20, continue_rounds=10), ranker_users=300, eval_users=300)


def main(home: str, files: list[str]) -> None:
    settings = Settings(home=Path(home))
    settings.ensure_dirs()
    registry = ModelRegistry(settings.models_dir)
    for name in files:
        print(f"landing {Path(name).name}", flush=True)
        report = land_file(settings.warehouse(), Path(name))
        with settings.warehouse().connect() as con:
            con.execute("UPDATE ingested_files SET quality_status = 'passed' WHERE batch_id = ?"
                        " AND quality_status = 'pending'", [report.batch_id])
        print("refresh", flush=True)
        refresh(settings.warehouse(), registry, settings.serving_path, CONFIG)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""The model registry: status changes, rollback, and artifacts that are never loaded when tampered with."""

import pytest

from rec_pipeline.core.errors import ArtifactError, NotFoundError
from rec_pipeline.core.model.registry import ModelRegistry, new_version


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def make_artifact(registry: ModelRegistry, version: str, payload: bytes = b"weights") -> None:
    folder = registry.artifact_dir(version)
    folder.mkdir(parents=True)
    (folder / "weights.npz").write_bytes(payload)
    (folder / "vocab.json").write_text('{"users": []}')


def register(con, registry, version, parent=None):
    make_artifact(registry, version, payload=version.encode())
    return registry.register(con, version, "retrieval+ranker", parent, (None, None), {"ndcg@10": 0.3})


def test_register_promote_and_roll_back(warehouse, registry):
    with warehouse.connect() as con:
        first = register(con, registry, "m-1")
        assert first.status == "challenger" and registry.champion(con) is None
        registry.make_champion(con, "m-1", "gate", "first")
        register(con, registry, "m-2", parent="m-1")
        registry.make_champion(con, "m-2", "gate", "better")
        assert registry.champion(con).version == "m-2"
        assert registry.get(con, "m-1").status == "retired"
        assert registry.get(con, "m-2").parent == "m-1"

        registry.make_champion(con, "m-1", "rollback", "by hand")
        assert registry.champion(con).version == "m-1"
        assert [m.status for m in registry.versions(con) if m.version == "m-2"] == ["retired"]
        assert con.execute("SELECT count(*) FROM model_registry WHERE status = 'champion'").fetchone()[0] == 1
        history = registry.champion_history(con, "m-1")
        assert [(h["promoted_by"], h["previous"], h["reason"]) for h in history] == [
            ("gate", None, "first"), ("rollback", "m-2", "by hand")]


def test_a_tampered_artifact_is_never_loaded(warehouse, registry):
    with warehouse.connect() as con:
        register(con, registry, "m-1")
        assert registry.verified_artifact(con, "m-1") == registry.artifact_dir("m-1").resolve()
        (registry.artifact_dir("m-1") / "weights.npz").write_bytes(b"evil")
        with pytest.raises(ArtifactError, match="do not match"):
            registry.verified_artifact(con, "m-1")


def test_an_added_file_changes_the_checksum(warehouse, registry):
    with warehouse.connect() as con:
        register(con, registry, "m-1")
        (registry.artifact_dir("m-1") / "extra.json").write_text("{}")
        with pytest.raises(ArtifactError):
            registry.verified_artifact(con, "m-1")


def test_artifacts_outside_the_models_folder_are_refused(warehouse, registry, tmp_path):
    with warehouse.connect() as con:
        register(con, registry, "m-1")
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        con.execute("UPDATE model_registry SET artifact_path = ? WHERE version = 'm-1'", [str(outside)])
        with pytest.raises(ArtifactError, match="not an artifact folder"):
            registry.verified_artifact(con, "m-1")
        with pytest.raises(ArtifactError):
            registry.register(con, "../escape", "retrieval", None, (None, None), {})


def test_unknown_versions_are_a_clear_error(warehouse, registry):
    with warehouse.connect() as con, pytest.raises(NotFoundError, match="no model version m-9"):
        registry.make_champion(con, "m-9", "rollback", "by hand")


def test_new_versions_are_unique_and_sortable():
    versions = [new_version() for _ in range(20)]
    assert len(set(versions)) == 20 and all(v.startswith("m-") for v in versions)


def test_an_artifact_appears_whole_or_not_at_all(registry):
    def crash_half_way(folder):
        folder.mkdir(parents=True)
        (folder / "weights.npz").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.write_artifact("m-1", crash_half_way)
    assert not registry.artifact_dir("m-1").exists(), "no partial folder where a registry row would point"

    def save(folder):
        folder.mkdir(parents=True)
        (folder / "weights.npz").write_bytes(b"whole")

    assert registry.write_artifact("m-1", save) == registry.artifact_dir("m-1")
    assert (registry.artifact_dir("m-1") / "weights.npz").read_bytes() == b"whole"
    assert [p.name for p in registry.models_dir.iterdir()] == ["m-1"], "the leftover staging folder was replaced"

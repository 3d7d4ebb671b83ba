import pytest

from forge_node.errors import MigrationError
from forge_node.migrations import discover, internal_migrations


def test_files_are_ordered_by_version_and_split_at_the_down_marker(tmp_path):
    (tmp_path / "0010_later.sql").write_text("CREATE TABLE b ();\n")
    (tmp_path / "0002_first.sql").write_text("CREATE TABLE a ();\n-- @down\nDROP TABLE a;\n")
    first, later = discover(tmp_path, "app")
    assert (first.version, first.name, later.version) == (2, "first", 10)
    assert first.up == "CREATE TABLE a ();" and first.down == "DROP TABLE a;"
    assert later.down is None


def test_a_misnamed_or_duplicate_file_is_an_error(tmp_path):
    (tmp_path / "notes.sql").write_text("")
    (tmp_path / "0001_a.sql").write_text("")
    (tmp_path / "001_b.sql").write_text("")
    with pytest.raises(MigrationError) as caught:
        discover(tmp_path, "app")
    assert "notes.sql: a migration file must be named NNNN_name.sql" in str(caught.value)
    assert "001_b.sql: version 1 is also used by 0001_a.sql" in str(caught.value)


def test_a_missing_folder_has_no_migrations(tmp_path):
    assert discover(tmp_path / "absent", "app") == []


def test_the_checksum_changes_with_the_text(tmp_path):
    path = tmp_path / "0001_a.sql"
    path.write_text("SELECT 1;")
    before = discover(tmp_path, "app")[0].checksum
    path.write_text("SELECT 2;")
    assert discover(tmp_path, "app")[0].checksum != before


def test_forge_node_ships_its_own_numbered_migrations():
    assert internal_migrations()[0].label == "forge_node/schema/0001_cluster.sql"

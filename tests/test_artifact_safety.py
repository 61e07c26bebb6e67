"""Bad entries in a run's artifact folder, on real stores: MLflow writes the run and its good
artifacts, the test adds the nasty entries into its artifact folder, `syncer backfill` (the CLI,
a subprocess with a timeout: a FIFO once hung it forever) converts the rest and names each one it
skipped. And a file that cannot be converted is listed as not copied, with its error."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from conftest import T0, client_for, read_aim, run_syncer, store_uri

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs symlinks and FIFOs (POSIX)")


def make_run(uri: str, tmp_path: Path) -> tuple[str, Path]:
    """A finished run with good artifacts; returns (run id, its local artifact folder)."""
    from PIL import Image

    client = client_for(uri)
    location = (tmp_path / "artifacts-root").as_uri() if uri.startswith("sqlite:") else None
    exp = client.create_experiment("safety", artifact_location=location)
    run = client.create_run(exp, run_name="nasty", start_time=T0)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "good.txt").write_text("fine\n")
    (src / "sub" / "ok.txt").write_text("also fine\n")
    Image.new("RGB", (4, 4), (0, 90, 200)).save(src / "plot.png")
    client.log_artifacts(run.info.run_id, str(src))
    client.set_terminated(run.info.run_id, "FINISHED", end_time=T0 + 1000)
    root = Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))
    assert (root / "good.txt").is_file()
    return run.info.run_id, root


@pytest.fixture(params=["file", "sqlite"])
def store(request, tmp_path):
    uri = store_uri(request.param, tmp_path)
    run_id, root = make_run(uri, tmp_path)
    return uri, run_id, root


def backfill(uri: str, repo: Path):
    return run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), timeout=120)


def listed(repo: Path, run_id: str) -> dict[str, dict]:
    return {a["path"]: a for a in read_aim(repo)[run_id]["params"]["artifacts"]}


GOOD = {"good.txt", "sub/ok.txt", "plot.png"}


def test_a_dangling_symlink_is_skipped_with_a_warning_and_the_rest_is_listed(store, tmp_path):
    uri, run_id, root = store
    (root / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    p = backfill(uri, tmp_path / "aim")
    assert p.returncode == 0, p.stderr
    assert "'dangling.txt' skipped: a dangling symlink" in p.stderr
    assert set(listed(tmp_path / "aim", run_id)) == GOOD


def test_a_symlink_loop_is_skipped_with_a_warning_and_the_rest_is_listed(store, tmp_path):
    uri, run_id, root = store
    (root / "loop_a.txt").symlink_to(root / "loop_b.txt")
    (root / "loop_b.txt").symlink_to(root / "loop_a.txt")
    (root / "sub" / "back").symlink_to(root)  # a folder link back up: walked once, not forever
    p = backfill(uri, tmp_path / "aim")
    assert p.returncode == 0, p.stderr
    for name in ("loop_a.txt", "loop_b.txt"):
        assert f"'{name}' skipped: a symlink loop" in p.stderr
    assert "'sub/back' skipped: a symlink loop" in p.stderr
    assert set(listed(tmp_path / "aim", run_id)) == GOOD


def test_a_fifo_named_like_text_neither_hangs_nor_is_read(store, tmp_path):
    uri, run_id, root = store
    os.mkfifo(root / "pipe.txt")  # nobody ever writes into it
    p = backfill(uri, tmp_path / "aim")  # the timeout fails the test if it hangs
    assert p.returncode == 0, p.stderr
    assert "'pipe.txt' skipped: a FIFO, not a regular file" in p.stderr
    assert set(listed(tmp_path / "aim", run_id)) == GOOD


def test_links_out_of_the_artifact_folder_are_never_followed(store, tmp_path):
    uri, run_id, root = store
    secret = tmp_path / "secret.txt"
    secret.write_text("not an artifact\n")
    (root / "outside.txt").symlink_to(secret)
    (root / "zero.txt").symlink_to("/dev/zero")  # read, it never ends (MemoryError)
    (root / "etc").symlink_to("/etc")
    p = backfill(uri, tmp_path / "aim")
    assert p.returncode == 0, p.stderr
    for name in ("outside.txt", "zero.txt", "etc"):
        assert f"'{name}' skipped: a symlink out of the artifact folder" in p.stderr
    got = listed(tmp_path / "aim", run_id)
    assert set(got) == GOOD
    assert "not an artifact" not in str(read_aim(tmp_path / "aim")[run_id])


def test_a_link_inside_the_folder_is_followed_and_a_socket_is_skipped(store, tmp_path):
    uri, run_id, root = store
    (root / "again.txt").symlink_to(root / "good.txt")
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # AF_UNIX paths are short; a bound socket can move
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(short / "s.sock"))
        os.rename(short / "s.sock", root / "s.sock")
        p = backfill(uri, tmp_path / "aim")
    finally:
        sock.close()
        shutil.rmtree(short, ignore_errors=True)
    assert p.returncode == 0, p.stderr
    assert "'s.sock' skipped: a socket, not a regular file" in p.stderr
    got = listed(tmp_path / "aim", run_id)
    assert set(got) == GOOD | {"again.txt"}
    assert got["again.txt"]["copied_as"] == "text" and got["again.txt"]["size"] == len("fine\n")


def test_an_image_that_cannot_be_converted_is_listed_as_not_copied_with_its_error(store, tmp_path):
    uri, run_id, root = store
    (root / "broken.png").write_bytes(b"this is not a png")
    p = backfill(uri, tmp_path / "aim")
    assert p.returncode == 1, p.stderr  # the run had an error: said, and the rest converted
    assert "artifact 'broken.png' cannot be converted" in p.stderr
    got = listed(tmp_path / "aim", run_id)
    assert got["broken.png"]["copied_as"] is None
    assert "cannot identify image file" in got["broken.png"]["error"]
    assert got["plot.png"]["copied_as"] == "image" and "error" not in got["plot.png"]
    assert "broken" not in str(read_aim(tmp_path / "aim")[run_id]["objects"])

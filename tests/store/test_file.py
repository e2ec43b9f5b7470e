"""What only the file backend does: URLs, atomic writes that leave nothing behind, versions that never
repeat (the ABA guard), and errors that name the path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from contract.store import (
    InvalidStoreURL,
    MemoryStore,
    StoredObject,
    StoreError,
    StoreMissing,
    StoreUnavailable,
    open_store,
)
from contract.store.bulk import get_many, read_folders
from contract.store.file import FileStore, _read_to_end, _translate, missing_folder, path_from_url
from contract.store.instrumented import instrument_store
from contract.store.sealed import seal_store


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert path_from_url("file:///var/lib/fleetshift/store") == Path("/var/lib/fleetshift/store")
    assert path_from_url("file://localhost/var/lib/x") == Path("/var/lib/x")
    assert path_from_url("file://.fleetshift/store") == Path(".fleetshift/store")
    assert path_from_url("file://./store") == Path("store")
    assert path_from_url("file://../store") == Path("../store")
    assert path_from_url("file:///tmp/with%20space") == Path("/tmp/with space")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert path_from_url("file://~/store") == tmp_path / "store"
    with pytest.raises(StoreError, match="names no folder"):
        path_from_url("file://")


@pytest.mark.parametrize(("url", "three_slashes"), [
    ("file://tmp/x", "file:///tmp/x"),
    ("file://var/lib/fleetshift/store", "file:///var/lib/fleetshift/store"),
    ("file://store", "file:///store"),
])
def test_a_host_in_a_file_url_is_refused_showing_the_three_slash_form(url: str, three_slashes: str) -> None:
    """`file://tmp/x` is `file:///tmp/x` with a slash missing; read as the relative folder `tmp/x` it would put
    the store somewhere the other side never looks."""
    with pytest.raises(InvalidStoreURL) as raised:
        path_from_url(url)
    assert three_slashes in str(raised.value)
    assert "host" in str(raised.value)


def test_a_reader_never_creates_the_store_folder(tmp_path: Path) -> None:
    """`create=False`: a missing folder reads as an empty store, is reported by `missing_folder`, refuses
    writes with `StoreMissing`, and is still missing afterwards."""
    folder = tmp_path / "missing" / "store"
    reader = open_store(f"file://{folder}", create=False)
    assert reader.get("hosts/a/status.json") is None
    assert reader.list("hosts/") == []
    assert missing_folder(reader) == folder
    reader.delete("hosts/a/status.json")
    with pytest.raises(StoreMissing, match=f"no store at {folder}"):
        reader.put("hosts/a/status.json", b"{}")
    assert not (tmp_path / "missing").exists()

    writer = open_store(f"file://{folder}")
    assert folder.is_dir() and missing_folder(writer) is None
    writer.put("hosts/a/status.json", b"{}")
    assert missing_folder(reader) is None
    reader.put("hosts/b/status.json", b"{}")  # once it exists, a reader-opened store works like any other
    assert [item.key for item in reader.list("hosts/")] == ["hosts/a/status.json", "hosts/b/status.json"]


def test_relative_store_is_created_under_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file://.fleetshift/store")
    store.put("hosts/a/status.json", b"{}")
    assert (tmp_path / ".fleetshift/store/hosts/a/status.json").read_bytes() == b"{}"


def test_layout_on_disk_is_the_key_and_nothing_is_left_behind(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    for index in range(20):
        store.put("hosts/web-1/status.json", f"status {index}".encode())
    store.put_if_absent("leases/reconciler.json", b"lease")
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()
                   and p.relative_to(tmp_path).parts[0] != ".locks")
    assert files == [".fleetshift-store", "hosts/web-1/status.json", "leases/reconciler.json"]
    assert (tmp_path / "hosts/web-1/status.json").read_bytes() == b"status 19"
    assert oct((tmp_path / "hosts/web-1/status.json").stat().st_mode & 0o777) == "0o644"


def test_listing_skips_temporary_and_lock_files(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    store.put("hosts/a/status.json", b"x")
    (tmp_path / "hosts/a/.tmp-crashed-writer").write_bytes(b"half a document")
    assert [item.key for item in store.list("")] == ["hosts/a/status.json"]


def test_versions_never_repeat_for_same_size_rewrites(tmp_path: Path) -> None:
    """Rapid same-size rewrites: inode numbers get reused and kernel mtimes are coarse, yet every version
    must differ from every earlier one, or a stale compare-and-swap could win (ABA)."""
    store = FileStore(f"file://{tmp_path}")
    versions = [store.put("groups/app/prod.json", b"same size %03d" % (index % 2)) for index in range(300)]
    assert len(set(versions)) == len(versions)
    inodes = {version.rsplit(".", 1)[1] for version in versions}
    assert len(inodes) < len(versions), "inodes were reused, which is the case the mtime stamping guards"


def test_mtimes_only_move_forward_even_when_the_clock_does_not(tmp_path: Path) -> None:
    """On kernels with coarse timestamps, or after the clock steps back, `now` can be at or before the
    replaced file's mtime; the writer must still stamp a strictly later one."""
    store = FileStore(f"file://{tmp_path}")
    store.put("k.json", b"first")
    path = tmp_path / "k.json"
    future = path.stat().st_mtime_ns + 3_600 * 10**9
    os.utime(path, ns=(future, future))
    store.put("k.json", b"later")
    assert path.stat().st_mtime_ns == future + 1


def test_version_is_cheap_stat_data_matching_the_file(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    version = store.put("k.json", b"12345")
    info = os.stat(tmp_path / "k.json")
    assert version == f"{info.st_mtime_ns:x}.{info.st_size:x}.{info.st_ino:x}"


def test_hand_edited_file_gets_a_new_version(tmp_path: Path) -> None:
    """An operator editing a command with an editor (write in place) is seen by pollers as a change."""
    store = FileStore(f"file://{tmp_path}")
    version = store.put("commands/h.json", b'{"generation": 1}')
    path = tmp_path / "commands/h.json"
    path.write_bytes(b'{"generation": 2}')
    os.utime(path, ns=(path.stat().st_mtime_ns + 1000, path.stat().st_mtime_ns + 1000))
    changed = store.get("commands/h.json", if_version_not=version)
    assert changed is not None and changed.data == b'{"generation": 2}'


def test_something_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    store.put("hosts/a", b"a file where a folder should be")
    with pytest.raises(StoreError, match="hosts/a") as raised:
        store.put("hosts/a/status.json", b"x")
    assert not raised.value.retryable
    assert store.get("hosts/a/status.json") is None
    (tmp_path / "groups/app.json").mkdir(parents=True)
    with pytest.raises(StoreError, match="not a regular file"):
        store.put("groups/app.json", b"x")


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("oops")
    with pytest.raises(StoreError, match="store"):
        FileStore(f"file://{tmp_path / 'store'}")


def test_os_errors_translate_to_permanent_or_retryable(tmp_path: Path) -> None:
    denied = _translate(OSError(errno.EACCES, "Permission denied"), "write", tmp_path / "k")
    assert not denied.retryable and "fix its permissions" in str(denied)
    assert str(denied).startswith(f"cannot write {tmp_path / 'k'}: Permission denied;")
    read_only = _translate(OSError(errno.EROFS, "Read-only file system"), "write", tmp_path / "k")
    assert not read_only.retryable and "read-only" in str(read_only) and "Read-only file system" in str(read_only)
    full = _translate(OSError(errno.ENOSPC, "No space left on device"), "write", tmp_path / "k")
    assert isinstance(full, StoreUnavailable) and full.retryable
    assert str(full) == f"cannot write {tmp_path / 'k'}: No space left on device"


def test_a_store_folder_that_cannot_be_created_says_so_in_plain_words(tmp_path: Path) -> None:
    """The folder's parent is a file: the message must read "cannot create the store folder", keep the OS's
    reason, and not be retryable (waiting does not move a file out of the way)."""
    (tmp_path / "not-a-folder").write_text("x")
    with pytest.raises(StoreError) as raised:
        open_store(f"file://{tmp_path / 'not-a-folder' / 'store'}")
    message = str(raised.value)
    assert message.startswith(f"cannot create the store folder {tmp_path / 'not-a-folder' / 'store'}: Not a directory")
    assert not raised.value.retryable


def test_every_os_failure_message_reads_as_cannot_verb(tmp_path: Path) -> None:
    """Reads, listings, writes and deletes each name their verb after "cannot" (no "cannot reading")."""
    store = FileStore(f"file://{tmp_path / 'store'}")
    store.put("hosts/a/status.json", b"x")
    (tmp_path / "store" / "hosts" / "a" / "status.json").unlink()
    (tmp_path / "store" / "hosts" / "a" / "status.json").mkdir()
    (tmp_path / "store" / "hosts" / "a" / "status.json" / "inner").write_text("x")
    with pytest.raises(StoreError) as raised:
        store.delete("hosts/a/status.json")
    assert str(raised.value).startswith(f"cannot delete {tmp_path / 'store' / 'hosts/a/status.json'}: ")
    assert "ing " not in str(raised.value).split(":", 1)[0]


def test_a_read_goes_on_past_a_short_read_and_past_a_file_that_grew() -> None:
    """`_read_to_end` reads the size `fstat` gave plus one byte: a pipe stands in for a file system that answers
    in pieces, and a size smaller than the data for a file edited in place after its `fstat`."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"abc")
        os.close(write_end)
        assert _read_to_end(read_end, 10, 100) == b"abc"  # short first read, then the end
    finally:
        os.close(read_end)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"0123456789")
        os.close(write_end)
        assert _read_to_end(read_end, 4, 100) == b"0123456789"  # "grew": read on to the end
    finally:
        os.close(read_end)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"x" * 50)
        os.close(write_end)
        assert len(_read_to_end(read_end, 4, 20)) == 21  # stops just past the limit: the caller calls it oversize
    finally:
        os.close(read_end)


def test_a_batch_read_checks_that_the_store_is_still_there(tmp_path: Path) -> None:
    """One marker check for the whole batch, after it: a folder moved away mid-batch is an outage, not a fleet
    whose every document is absent."""
    store = FileStore(f"file://{tmp_path / 'store'}")
    store.put("hosts/a/status.json", b"{}")
    assert store.get_many(["hosts/a/status.json"])["hosts/a/status.json"] is not None
    (tmp_path / "store").rename(tmp_path / "moved")
    with pytest.raises(StoreUnavailable, match="is gone"):
        store.get_many(["hosts/a/status.json", "hosts/b/status.json"])


def test_wrappers_read_a_batch_as_they_read_one_key(tmp_path: Path) -> None:
    """The signing wrapper unseals, the metrics wrapper counts a `get` per key, and a wrapper that only forwards
    unknown attributes keeps its own `get` (its batch is read one key at a time, never past it)."""
    inner = FileStore(f"file://{tmp_path / 'store'}")
    sealed = seal_store(inner, signer=None, trust=None)
    sealed.put("commands/web-1.json", b'{"a": 1}')
    inner.put("commands/forged.json", b"not an envelope")
    counted: list[tuple[str, bool]] = []
    instrumented = instrument_store(sealed, lambda operation, failed: counted.append((operation, failed)))
    found = get_many(instrumented, ["commands/web-1.json", "hosts/x/status.json"])
    assert found == {"commands/web-1.json": sealed.get("commands/web-1.json"), "hosts/x/status.json": None}
    assert counted == [("get", False), ("get", False)]
    counted.clear()
    sealed.put("groups/hello/web.json", b'{"a": 2}')
    inner.put("groups/other/web.json", b"not an envelope")
    expected = [sealed.get("groups/hello/web.json"), sealed.get("groups/other/web.json")]
    assert expected[0] is not None and expected[0].data == b'{"a": 2}'  # unsealed, as `get` returns it
    assert read_folders(instrumented, "groups/", ["web.json"]) == expected
    assert counted == [("list", False), ("get", False), ("get", False)]

    class Forwarding:
        def __init__(self, inner: FileStore) -> None:
            self.inner, self.url, self.reads = inner, inner.url, 0

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def get(self, key: str, *, if_version_not: str | None = None) -> StoredObject | None:
            self.reads += 1
            return self.inner.get(key, if_version_not=if_version_not)

    forwarding = Forwarding(inner)
    get_many(forwarding, ["commands/web-1.json", "commands/forged.json"])  # type: ignore[arg-type]
    assert forwarding.reads == 2


def test_reading_folders_by_name_leaves_out_what_a_listing_leaves_out(tmp_path: Path) -> None:
    """The file store's `read_folders` opens each named file without listing its folder; whatever sits under
    `hosts/` instead of a plain file (a symbolic link, a named pipe, a socket, a folder, a dot file, a host folder
    that is a link) it must leave out exactly as a listing does, and a named pipe must not hang the read."""
    import socket

    store = FileStore(f"file://{tmp_path / 'store'}")
    store.put("hosts/a/status.json", b"a")
    store.put("hosts/a/registration.json", b"ra")
    store.put("hosts/a/conflicts/i1.json", b"c")
    store.put("hosts/b/registration.json", b"rb")
    hosts = tmp_path / "store" / "hosts"
    (hosts / "b" / "status.json").symlink_to(hosts / "a" / "status.json")
    (hosts / "c").mkdir()
    os.mkfifo(hosts / "c" / "status.json")
    (hosts / "c" / "registration.json").mkdir()
    (hosts / "d").mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(hosts / "d" / "status.json"))
    (hosts / "e").symlink_to(hosts / "a")
    (hosts / ".hidden").mkdir()
    (hosts / ".hidden" / "status.json").write_bytes(b"dot folder")
    (hosts / "a" / "conflicts" / ".i2.json").write_bytes(b"dot file")
    (hosts / "a" / "conflicts" / "i3.json").symlink_to(hosts / "a" / "conflicts" / "i1.json")
    (hosts / "f").mkdir()
    (hosts / "f" / "conflicts").write_bytes(b"a file where a folder is named")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_bytes(b"not the store's")
    (hosts / "g").mkdir()
    (hosts / "g" / "conflicts").symlink_to(outside)  # a link to a folder out of the store: never followed
    (hosts / "h").mkdir()
    (hosts / "h" / "conflicts").symlink_to("conflicts")  # a link to itself: no error, nothing read
    try:
        found = read_folders(store, "hosts/", ["registration.json", "status.json"], ["conflicts"])
    finally:
        listener.close()
    listed = [item.key for item in store.list("hosts/")]
    shaped = [key for key in listed
              if (key.count("/") == 2 and key.endswith(("/registration.json", "/status.json"))) or "/conflicts/" in key]
    assert [stored.key for stored in found] == shaped == [
        "hosts/a/conflicts/i1.json", "hosts/a/registration.json", "hosts/a/status.json", "hosts/b/registration.json",
    ]
    assert found == [store.get(key) for key in shaped]


def test_a_file_held_under_a_lease_is_waited_for_not_an_outage(tmp_path: Path) -> None:
    """A file server (Samba's kernel oplocks, knfsd's delegations) can hold a lease on a file: opening it without
    blocking then fails at once. `read_folders` waits for the lease's holder to let go, as `get` does, instead of
    reporting the store unavailable."""
    import fcntl
    import signal
    import time

    store = FileStore(f"file://{tmp_path / 'store'}")
    store.put("hosts/a/status.json", b"{}")
    path = tmp_path / "store" / "hosts" / "a" / "status.json"
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:  # the lease holder: a write lease, let go a second after being asked to
        try:
            signal.signal(signal.SIGIO, signal.SIG_IGN)
            fd = os.open(path, os.O_RDWR)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
            os.write(ready_write, b"x")
            time.sleep(1)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        except OSError as exc:
            os.write(ready_write, f"no lease: {exc}".encode())
        finally:
            os._exit(0)
    try:
        ready = os.read(ready_read, 200)
        assert ready == b"x", ready.decode()  # the kernel gave the holder its lease (fs.leases-enable)
        started = time.monotonic()
        found = read_folders(store, "hosts/", ["status.json"])
        assert [stored.key for stored in found] == ["hosts/a/status.json"] and found[0].data == b"{}"
        assert time.monotonic() - started >= 0.5  # it waited for the holder
    finally:
        os.waitpid(child, 0)
        os.close(ready_read)
        os.close(ready_write)


@pytest.mark.parametrize(("prefix", "names"), [
    ("hosts", ["status.json"]), ("hosts//", ["status.json"]), ("/hosts/", ["status.json"]), ("../", ["status.json"]),
    (".x/", ["status.json"]), ("hosts/./", ["status.json"]), ("hosts/", ["a/status.json"]), ("hosts/", [".partial"]),
    ("hosts/", [""]), ("hosts/", ["status\0.json"]), ("hosts/", "status.json"),
])
def test_reading_folders_refuses_what_is_not_a_folder_and_plain_names(
    tmp_path: Path, prefix: str, names: list[str]
) -> None:
    """A caller's mistake is refused the same way by every store, before anything is read."""
    for store in (FileStore(f"file://{tmp_path / 'store'}"), MemoryStore()):
        with pytest.raises(ValueError, match="read_folders"):
            read_folders(store, prefix, names)

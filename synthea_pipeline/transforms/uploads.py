"""Uploads: putting a Synthea export under `source/<upload_id>/` with a manifest, and deciding, from listings
of `source/`, which uploads are complete and new.

The manifest is written beside the upload folder, `source/<upload_id>.manifest.json`, after every file is
stored and verified. One listing of `source/` (folders and the objects directly in it) therefore shows every
upload and the version of its manifest, so a watcher sees new and re-uploaded exports without listing every
file of every upload on every tick. `source/<upload_id>.uploading` marks an upload in progress."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from synthea_pipeline.tables import TABLES, detect_release
from synthea_pipeline.transforms.lake import InvalidUploadId, validate_upload_id
from synthea_pipeline.transforms.raw import SOURCE_FILE, TableError, read_header
from synthea_pipeline.transforms.storage import PART_SIZE, FileDigest, Storage, StoredObject, digest_file

MANIFEST_SUFFIX = ".manifest.json"
REPLACE_FIELD = "replace"
GENERATION_FIELD = "generated_by"
"""The manifest field of a generated upload: the Synthea and the parameters it was generated with."""
"""A manifest field: `upload --replace` confirms that this upload may remove history it supersedes (`history`)."""
UPLOADING_SUFFIX = ".uploading"
PARALLEL_FILES = 4
INSPECTING_THREADS = PARALLEL_FILES * 2


class UploadError(Exception):
    """An export that cannot be uploaded as asked: missing folder, no patients.csv, a conflicting upload."""


def manifest_key(upload_id: str) -> str:
    return f"{upload_id}{MANIFEST_SUFFIX}"


def export_files(folder: str) -> list[str]:
    """The CSV files directly in an export folder; an export without patients.csv is not a Synthea export."""
    if os.path.isfile(folder):
        raise UploadError(f"{folder} is a file: pass the folder of the export (Synthea's output/csv) or a .zip of it")
    if not os.path.isdir(folder):
        raise UploadError(f"source folder {folder} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".csv") and os.path.isfile(f"{folder}/{n}"))
    if "patients.csv" not in names:
        raise UploadError(f"{folder} has no patients.csv: not a Synthea CSV export (point at its output/csv folder)")
    return names


@contextmanager
def export_folder(path: str) -> Iterator[str]:
    """The folder of an export given as a folder, or as a `.zip` of one (the public Synthea sample sets are zips,
    often with the CSV files in a `csv/` folder inside): its CSV files are extracted to a temporary folder that is
    deleted when the block ends, however it ends."""
    if not (os.path.isfile(path) and path.lower().endswith(".zip")):
        yield path
        return
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise UploadError(f"{path} is not a readable zip file ({error})") from None
    with archive, tempfile.TemporaryDirectory(prefix="synthea-export-") as folder:
        members = [m for m in archive.infolist() if not m.is_dir()]
        exports = sorted(
            {posixpath.dirname(m.filename) for m in members if posixpath.basename(m.filename).lower() == "patients.csv"}
        )
        if len(exports) != 1:
            found = (
                f"{len(exports)} folders with patients.csv ({', '.join(e or '/' for e in exports)})"
                if exports
                else "no patients.csv"
            )
            raise UploadError(f"{path}: {found}; a zip must hold one Synthea CSV export")
        for member in members:
            parent, name = posixpath.split(member.filename)
            if parent == exports[0] and name.lower().endswith(".csv"):
                with archive.open(member) as source, open(os.path.join(folder, name), "wb") as target:
                    shutil.copyfileobj(source, target, PART_SIZE)
        yield folder


def export_name(path: str) -> str:
    """The name an export's upload id is derived from: its folder's, or its zip file's without `.zip`."""
    name = path.rstrip("/\\")
    return name[: -len(".zip")] if name.lower().endswith(".zip") else name


def content_checksum(files: list[dict]) -> str:
    """SHA-256 over the sorted (name, size, sha256) of the files: equal for byte-identical exports."""
    lines = sorted(f"{f['name']}\t{f['size']}\t{f['sha256']}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def export_release(folder: str, names: list[str]) -> str:
    headers = {}
    for name in names:
        match = SOURCE_FILE.match(name)
        table = match and match["table"].lower()
        if table in TABLES and table not in headers:
            try:
                headers[table] = read_header(folder, name, table)[0]
            except TableError:
                continue
    return detect_release(headers)


def build_manifest(upload_id: str, digests: list[FileDigest], release: str, replace_history: bool = False) -> dict:
    """`upload_token` makes every manifest object distinct, so each upload has its own version (ETag), and names
    the upload in the lake's log."""
    files = [{"name": d.name, "size": d.size, "sha256": d.sha256} for d in digests]
    return {
        "upload_id": upload_id,
        "synthea_release": release,
        "checksum": content_checksum(files),
        "files": files,
        "uploaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "upload_token": uuid.uuid4().hex,
        REPLACE_FIELD: replace_history,
    }


def read_manifest(storage: Storage, upload_id: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(manifest_key(upload_id)))
    except FileNotFoundError:
        return None


def upload_export(
    folder: str,
    storage: Storage,
    upload_id: str,
    replace: bool = True,
    part_size: int = PART_SIZE,
    replace_history: bool = False,
    generated_by: dict | None = None,
    attachments: dict[str, str] | None = None,
) -> dict:
    """Store an export's CSV files under `<upload_id>/` of `storage` (the lake's `source/`), verify each one,
    remove files a previous upload under that id had and this one has not, then write the manifest. Returns
    the manifest. Every file is stored again even when the content is unchanged: cheaper than proving the stored
    copies intact, and the sensor sees the same checksum and starts no run. With `replace=False` an upload id
    that holds a different export is refused; `replace_history` confirms in the manifest that the upload may
    remove history it supersedes. A failed upload leaves its `.uploading` marker, so the sensor and
    the run keep off it until an upload succeeds. `generated_by` records how the export was generated;
    `attachments` (a subfolder name to a local folder) stores other files, such as FHIR bundles, in that subfolder
    of the upload, listed in the manifest apart from the CSV files, where no table reader looks."""
    validate_upload_id(upload_id)
    folder = os.path.abspath(folder)
    names = export_files(folder)
    with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
        digests = list(pool.map(lambda n: digest_file(f"{folder}/{n}", part_size, storage.verifies_etag), names))
    attached = [
        (f"{subfolder}/{name}", os.path.join(local, name))
        for subfolder, local in (attachments or {}).items()
        for name in sorted(os.listdir(local))
        if os.path.isfile(os.path.join(local, name))
    ]
    with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
        attached_digests = list(pool.map(lambda a: digest_file(a[1], part_size, storage.verifies_etag), attached))
    manifest = build_manifest(upload_id, digests, export_release(folder, names), replace_history)
    if generated_by is not None:
        manifest[GENERATION_FIELD] = generated_by
    if attached:
        manifest["attachments"] = [
            {"name": key, "size": d.size, "sha256": d.sha256}
            for (key, _), d in zip(attached, attached_digests, strict=True)
        ]
    existing_objects = list(storage.list_objects(upload_id))
    previous = read_manifest(storage, upload_id)
    same_content = previous is not None and previous.get("checksum") == manifest["checksum"]
    if not replace and existing_objects and not same_content:
        raise UploadError(
            f"upload id {upload_id!r} already holds a different export in {storage.uri(upload_id)}; pass "
            f"--upload-id with a new id for this one, or --upload-id {upload_id} to replace it"
        )
    marker = f"{upload_id}{UPLOADING_SUFFIX}"
    storage.write_bytes(marker, json.dumps({"upload_id": upload_id}).encode())
    with ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
        list(
            pool.map(
                lambda d: storage.upload_file(f"{folder}/{d.name}", f"{upload_id}/{d.name}", d, part_size), digests
            )
        )
        list(
            pool.map(
                lambda a: storage.upload_file(a[0][1], f"{upload_id}/{a[0][0]}", a[1], part_size),
                zip(attached, attached_digests, strict=True),
            )
        )
    kept = {f"{upload_id}/{n}" for n in names} | {f"{upload_id}/{key}" for key, _ in attached}
    for stale in {o.key for o in existing_objects} - kept:
        storage.delete(stale)
    storage.write_bytes(manifest_key(upload_id), json.dumps(manifest, indent=1).encode())
    storage.delete(marker)
    return manifest


def confirm_replace(storage: Storage, upload_id: str) -> dict:
    """Marks an upload already in `source/` as allowed to remove history it supersedes: its manifest again, with
    `replace` set and a new token (so the sensor sees a new upload)."""
    manifest = read_manifest(storage, upload_id)
    if manifest is None:
        raise UploadError(
            f"upload {upload_id} has no manifest to confirm --replace in: upload it with "
            f"synthea-pipeline upload EXPORT --upload-id {upload_id} --replace"
        )
    manifest.update({REPLACE_FIELD: True, "upload_token": uuid.uuid4().hex})
    storage.write_bytes(manifest_key(upload_id), json.dumps(manifest, indent=1).encode())
    return manifest


def removal_holds(state: dict | None, manifest: dict | None) -> bool:
    """Whether the lake's removal of an upload (`state`, its row of the `upload_states` view) still covers what
    `source/` holds: until a new manifest, which only `upload` and `run` write, brings the upload back. The
    removal names the manifest it took out; removals logged before it did are compared by time."""
    if not state or state["state"] != "removed":
        return False
    if manifest is None:
        return True
    if state.get("upload_token"):
        return manifest.get("upload_token") == state["upload_token"]
    uploaded = datetime.fromisoformat(manifest.get("uploaded_at", "1970-01-01T00:00:00+00:00"))
    removed = state["removed_at"]
    return uploaded <= (removed if removed.tzinfo else removed.replace(tzinfo=timezone.utc))


def removal_notice(upload_id: str, state: dict) -> str:
    return (
        f"removed from the lake at {state['removed_at']:%Y-%m-%d %H:%M:%S} UTC "
        f"({state.get('removal_note') or 'removed'}); upload it again to bring it back: "
        f"synthea-pipeline upload EXPORT --upload-id {upload_id}"
    )


def already_committed(state: dict | None, manifest: dict | None) -> bool:
    """Whether the lake's committed load of an upload was made from this very manifest."""
    return bool(
        state
        and manifest
        and state["state"] == "committed"
        and state.get("upload_token")
        and state["upload_token"] == manifest.get("upload_token")
    )


def missing_or_different(manifest: dict, objects: list[StoredObject]) -> list[str]:
    """The manifest's files that are absent or have another size among `objects` (keys `<upload>/<name>`)."""
    sizes = {o.key.rsplit("/", 1)[-1]: o.size for o in objects}
    problems = []
    for entry in manifest.get("files", []):
        size = sizes.get(entry["name"])
        if size is None:
            problems.append(f"{entry['name']} missing")
        elif size != entry["size"]:
            problems.append(f"{entry['name']} has {size} bytes, the manifest says {entry['size']}")
    return problems


@dataclass
class ReadyUpload:
    """`version` is the manifest's (empty without one): with it in the run key, content that returns to an
    earlier state (A, B, then A again) still gets a run, which Dagster would refuse for a reused key."""

    upload_id: str
    checksum: str
    version: str = ""
    manifest: dict | None = field(default=None, compare=False, repr=False)

    @property
    def run_key(self) -> str:
        version = hashlib.sha256(self.version.encode()).hexdigest()[:12] if self.version else ""
        return f"{self.upload_id}@{self.checksum[:16]}" + (f".{version}" if version else "")


@dataclass
class TickOutcome:
    """What a tick found, and the state its cursor saves: `done` and `pending` with every ready upload handed out,
    `before` the entries the ready uploads had when the tick began, `inspected` the uploads read this tick in
    turn order, which began after the cursor's `started_after` and goes on after `after` next tick."""

    ready: list[ReadyUpload] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    uploads_seen: int = 0
    unchanged: int = 0
    done: dict[str, list] = field(default_factory=dict)
    pending: dict[str, list] = field(default_factory=dict)
    before: dict[str, tuple[list | None, list | None]] = field(default_factory=dict)
    inspected: list[str] = field(default_factory=list)
    started_after: str = ""
    after: str = ""

    @property
    def cursor(self) -> str:
        return self.cursor_handing_out(len(self.ready))

    def cursor_handing_out(self, count: int) -> str:
        """The cursor when only the first `count` ready uploads are handed out, for a caller that runs out of
        time: the others get their entries back and come first on the next tick, so none is lost or repeated."""
        done, pending, after = dict(self.done), dict(self.pending), self.after
        held_back = [ready.upload_id for ready in self.ready[count:]]
        for upload in held_back:
            for entries, previous in zip((done, pending), self.before[upload], strict=False):
                if previous is None:
                    entries.pop(upload, None)
                else:
                    entries[upload] = previous
        if held_back:
            position = self.inspected.index(held_back[0])
            after = self.inspected[position - 1] if position else self.started_after
        return json.dumps(
            {"done": dict(sorted(done.items())), "pending": dict(sorted(pending.items())), "after": after},
            separators=(",", ":"),
        )


class UploadWatcher:
    """Decides, tick by tick, which uploads under `storage` (the lake's `source/`) are complete and not yet
    handed out, remembering in a JSON cursor what it handed out (by manifest version and content checksum) and
    since when a manifest-less upload has been unchanged.

    - With a manifest: complete when every listed file is present with its size; a new run only when the
      manifest's checksum differs from the one last handed out, so an identical re-upload starts none.
    - Without one (files copied by hand): complete once it holds patients.csv and its listing (keys, sizes,
      ETags) has not changed for `quiet_seconds`; handed out once.
    The cursor does not depend on object timestamps, and everything it needs survives in it across restarts.
    A tick lists `source/` once (folders and manifests); only new, changed or waiting uploads are read and
    listed, at most `max_inspections` of them (in parallel) and none started past the tick's deadline, taking
    turns across ticks so uploads that keep waiting cannot starve the others, and a tick stays short however
    many uploads land at once. `clock` (monotonic) times the deadline; tests pass one they advance themselves."""

    def __init__(
        self,
        storage: Storage,
        quiet_seconds: float,
        max_inspections: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.storage = storage
        self.quiet_seconds = quiet_seconds
        self.max_inspections = max_inspections
        self.clock = clock

    def tick(self, cursor: str | None, now: float, deadline: float | None = None) -> TickOutcome:
        """`now` is the wall clock of quiet periods; `deadline` (on `clock`) ends the inspections, and the uploads
        it leaves out keep their turn in the cursor."""
        state = json.loads(cursor) if cursor else {}
        done: dict[str, list[str]] = state.get("done", {})
        pending: dict[str, list] = state.get("pending", {})
        objects, folders = self.storage.list_children("")
        manifests = {o.key[: -len(MANIFEST_SUFFIX)]: o for o in objects if o.key.endswith(MANIFEST_SUFFIX)}
        uploading = {o.key[: -len(UPLOADING_SUFFIX)] for o in objects if o.key.endswith(UPLOADING_SUFFIX)}
        present = set(folders) | set(manifests)
        outcome = TickOutcome(uploads_seen=len(present))
        to_inspect = []
        for upload in sorted(present):
            try:
                validate_upload_id(upload)
            except InvalidUploadId as error:
                outcome.skipped[upload] = str(error)
                continue
            manifest = manifests.get(upload)
            if upload in uploading:
                outcome.skipped[upload] = f"upload in progress ({upload}{UPLOADING_SUFFIX} present)"
            elif upload in done and done[upload][0] == (manifest.version if manifest else ""):
                outcome.unchanged += 1
            else:
                to_inspect.append(upload)
        outcome.started_after = state.get("after", "")
        to_inspect = [u for u in to_inspect if u > outcome.started_after] + [
            u for u in to_inspect if u <= outcome.started_after
        ]
        found = self._inspect_in_order(to_inspect[: self.max_inspections], manifests, deadline)
        outcome.inspected = to_inspect[: len(found)]
        if len(found) < len(to_inspect):
            limit = (
                f"at most {self.max_inspections} per tick"
                if len(found) == self.max_inspections
                else "the tick's time budget ran out"
            )
            for upload in to_inspect[len(found) :]:
                outcome.skipped[upload] = (
                    f"left for a later tick ({len(to_inspect)} uploads to inspect, "
                    f"{len(found)} inspected: {limit}; in turn)"
                )
            outcome.after = outcome.inspected[-1]
        before = {upload: (done.get(upload), pending.get(upload)) for upload in outcome.inspected}
        for upload, (content, listed) in zip(outcome.inspected, found, strict=False):
            if upload in manifests:
                self._with_manifest(upload, manifests[upload], content, listed, done, pending, outcome)
            else:
                self._without_manifest(upload, listed, now, done, pending, outcome)
        outcome.before = {ready.upload_id: before[ready.upload_id] for ready in outcome.ready}
        outcome.done = {u: v for u, v in done.items() if u in present}
        outcome.pending = {u: v for u, v in pending.items() if u in present}
        return outcome

    def _inspect_in_order(
        self, uploads: list[str], manifests: dict[str, StoredObject], deadline: float | None
    ) -> list[tuple[dict | str | None, list[StoredObject]]]:
        """Inspects `uploads` in order, `INSPECTING_THREADS` at a time, and starts none once `deadline` has passed
        (except the first, so every tick makes progress). What it returns is for a prefix of `uploads`: the rest
        can wait their turn behind the cursor's `after`."""
        started: list[Future] = []
        with ThreadPoolExecutor(max_workers=INSPECTING_THREADS) as pool:
            running: set[Future] = set()
            for upload in uploads:
                if len(running) == INSPECTING_THREADS:
                    running = wait(running, return_when=FIRST_COMPLETED).not_done
                if started and deadline is not None and self.clock() >= deadline:
                    break
                started.append(pool.submit(self._inspect, upload, manifests.get(upload)))
                running.add(started[-1])
        return [future.result() for future in started]

    def _inspect(self, upload: str, manifest: StoredObject | None) -> tuple[dict | str | None, list[StoredObject]]:
        """The manifest's content (or why it cannot be read) and the upload's objects."""
        content: dict | str | None = None
        if manifest is not None:
            try:
                content = json.loads(self.storage.read_bytes(manifest.key))
                if not {"checksum", "files"} <= set(content):
                    raise ValueError("no 'checksum' or 'files'")
            except Exception as error:
                content = f"manifest {manifest.key} unreadable: {error!r}"
        return content, list(self.storage.list_objects(upload))

    def _with_manifest(
        self,
        upload: str,
        manifest: StoredObject,
        content: dict | str,
        present: list[StoredObject],
        done: dict,
        pending: dict,
        outcome: TickOutcome,
    ) -> None:
        if isinstance(content, str):
            outcome.skipped[upload] = content
            return
        checksum, listed = content["checksum"], content["files"]
        problems = missing_or_different(content, present)
        if problems:
            have = len(listed) - sum(1 for p in problems if p.endswith(" missing"))
            outcome.skipped[upload] = (
                f"incomplete: manifest lists {len(listed)} files, {have} present "
                f"({'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''})"
            )
            return
        previous = done.get(upload)
        pending.pop(upload, None)
        done[upload] = [manifest.version, checksum]
        if previous and previous[1] == checksum:
            outcome.skipped[upload] = f"identical re-upload (checksum {checksum[:16]}): no new run"
            return
        outcome.ready.append(ReadyUpload(upload, checksum, manifest.version, content))

    def _without_manifest(
        self, upload: str, present: list[StoredObject], now: float, done: dict, pending: dict, outcome: TickOutcome
    ) -> None:
        names = {o.key[len(upload) + 1 :] for o in present}
        if "patients.csv" not in names:
            nested = sorted(n for n in names if n.endswith("/patients.csv"))
            hint = f" (found {nested[0]}: copy that folder's contents instead)" if nested else ""
            outcome.skipped[upload] = f"no manifest and no patients.csv yet{hint}"
            pending.pop(upload, None)
            return
        signature = hashlib.sha256(
            "".join(sorted(f"{o.key}\t{o.size}\t{o.version}\n" for o in present)).encode()
        ).hexdigest()
        seen = pending.get(upload)
        if not seen or seen[0] != signature:
            pending[upload] = [signature, now]
            seen = pending[upload]
        quiet_for = now - seen[1]
        if quiet_for < self.quiet_seconds:
            outcome.skipped[upload] = (
                f"no manifest: waiting until its files have been unchanged for "
                f"{self.quiet_seconds:g} s (unchanged for {quiet_for:.0f} s)"
            )
            return
        pending.pop(upload)
        done[upload] = ["", signature]
        outcome.ready.append(ReadyUpload(upload, signature))

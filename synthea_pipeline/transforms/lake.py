"""Where each layer lives under the lake root, and filesystem access to it (local folder or s3://)."""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from dataclasses import dataclass

from pyarrow import fs as pafs

UPLOAD_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,127}$")


class InvalidUploadId(ValueError):
    pass


def validate_upload_id(upload_id: str) -> str:
    """Upload ids become partition keys and path segments: no commas, slashes or spaces."""
    if not UPLOAD_ID_PATTERN.match(upload_id or ""):
        raise InvalidUploadId(
            f"invalid upload id {upload_id!r}: use 1-128 letters, digits, '.', '_', '-' or '=', "
            "starting with a letter or digit (no commas, slashes or spaces)"
        )
    return upload_id


def upload_id_for_folder(folder: str) -> str:
    """A stable, partition-safe upload id derived from a folder name."""
    name = posixpath.basename(folder.rstrip("/\\").replace("\\", "/")) or "upload"
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "upload"
    return validate_upload_id(cleaned[:128])


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or an s3:// URI."""
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        options = {"region": region}
        if endpoint:
            options["endpoint_override"] = endpoint
            options["scheme"] = "https" if endpoint.startswith("https") else "http"
        return pafs.S3FileSystem(**options), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


@dataclass(frozen=True)
class Lake:
    """The lake layout: `source/<upload>/`, `<layer>/<table>/upload_id=<upload>/` for raw, staging and
    quarantine, `marts/<table>/`."""

    root: str

    @property
    def on_s3(self) -> bool:
        return self.root.startswith("s3://")

    def uri(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def source(self, upload_id: str) -> str:
        return self.uri("source", upload_id)

    def partition(self, layer: str, table: str, upload_id: str) -> str:
        return self.uri(layer, table, f"upload_id={upload_id}")

    def staging_path(self, upload_id: str, table: str) -> str:
        return self.partition("staging", table, upload_id)


def files_in(uri: str) -> list[str]:
    """Files directly under a folder URI (empty when it does not exist), sorted by name."""
    fs, path = filesystem_for(uri)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path) for i in info if i.type == pafs.FileType.File)


def staging_area(final_uri: str) -> str:
    """A fresh sibling of `final_uri` to write into before `publish` swaps it in."""
    parent, name = final_uri.rstrip("/").rsplit("/", 1)
    return f"{parent}/_tmp_{name}_{uuid.uuid4().hex[:12]}"


def publish(temp_uri: str, final_uri: str) -> None:
    """Replace `final_uri` by `temp_uri`.

    On a local folder this is two renames (old aside, new in): a reader sees the old or the new folder, never a
    mix. S3 has no rename: the new objects are copied in first and the old ones deleted after, so the partition
    is never absent, but a reader listing it between the two steps can see both versions' files."""
    fs, temp = filesystem_for(temp_uri)
    _, final = filesystem_for(final_uri)
    if isinstance(fs, pafs.LocalFileSystem):
        _, trash = filesystem_for(staging_area(final_uri))
        exists = fs.get_file_info(final).type != pafs.FileType.NotFound
        if exists:
            fs.move(final, trash)
        fs.move(temp, final)
        if exists:
            fs.delete_dir(trash)
        return
    old = [i.path for i in fs.get_file_info(pafs.FileSelector(final, recursive=True, allow_not_found=True))
           if i.type == pafs.FileType.File]
    new = {i.path[len(temp) :] for i in fs.get_file_info(pafs.FileSelector(temp, recursive=True))
           if i.type == pafs.FileType.File}
    for relative in sorted(new):
        fs.copy_file(temp + relative, final + relative)
    for path in old:
        if path[len(final) :] not in new:
            fs.delete_file(path)
    fs.delete_dir(temp)


def write_text(uri: str, text: str) -> None:
    """Replace one small file at once: a single PUT on S3, a temporary file renamed over it locally."""
    fs, path = filesystem_for(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(text.encode("utf-8"))
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(temp, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temp, path)


def discard(uri: str) -> None:
    """Remove a folder written by `staging_area` that is not to be published."""
    fs, path = filesystem_for(uri)
    fs.delete_dir(path)

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


def aws_endpoint(service: str) -> str | None:
    """The endpoint the AWS SDKs use for `service` (`s3`, `glue`): AWS_ENDPOINT_URL_<SERVICE>, else
    AWS_ENDPOINT_URL (a local stand-in such as moto), else None (AWS itself). Read when called."""
    return os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL")


def aws_region() -> str:
    """The AWS region as the AWS SDKs resolve it, read when called: AWS_REGION, then AWS_DEFAULT_REGION, then the
    profile's (boto3 itself reads only the last two); us-east-1 when none is set."""
    import boto3

    return os.environ.get("AWS_REGION") or boto3.Session().region_name or "us-east-1"


def aws_client(service: str):
    """A boto3 client in `aws_region()`, credentials and endpoint from the usual AWS environment; build it when it
    is needed, never at import (definitions load without credentials)."""
    import boto3

    return boto3.client(service, region_name=aws_region())


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or an s3:// URI."""
    if uri.startswith("s3://"):
        endpoint = aws_endpoint("s3")
        options = {"region": aws_region()}
        if endpoint:
            options["endpoint_override"] = endpoint
            options["scheme"] = "https" if endpoint.startswith("https") else "http"
        return pafs.S3FileSystem(**options), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


@dataclass(frozen=True)
class Lake:
    """The lake layout: `source/<upload>/`, `raw/<table>/upload_id=<upload>/load_id=<run>/` and the Iceberg
    tables `staging/<table>/`, `staging/quarantine/`, `marts/<table>/`."""

    root: str

    @classmethod
    def at(cls, root: str) -> Lake:
        """The lake at a root as a user gives it: `s3://bucket/prefix`, or a folder (made absolute)."""
        lake = cls(root)
        return lake if lake.on_s3 else cls(os.path.abspath(root))

    @property
    def on_s3(self) -> bool:
        """The one place that tells a lake on S3 from a local folder: everything else asks the lake."""
        return self.root.startswith("s3://")

    @property
    def bucket(self) -> str:
        """The bucket of a lake on S3."""
        return self.root[len("s3://") :].split("/", 1)[0]

    def table_catalog(self, local: str) -> str:
        """How Spark names the lake's Iceberg tables (`transforms.iceberg.CATALOGS`): through the Glue Data Catalog
        for a lake on S3, else `local`, the engine's own way."""
        return "glue" if self.on_s3 else local

    def uri(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def source(self, upload_id: str) -> str:
        return self.uri("source", upload_id)

    def raw(self, table: str, upload_id: str, load_id: str | None = None) -> str:
        """An upload's raw partition of one table, or of one load (run) of it."""
        partition = self.uri("raw", table, f"upload_id={upload_id}")
        return f"{partition}/load_id={load_id}" if load_id else partition


def files_in(uri: str) -> list[str]:
    """Files directly under a folder URI (empty when it does not exist), sorted by name."""
    return sorted(sizes_in(uri))


def sizes_in(uri: str) -> dict[str, int]:
    """The size of each file directly under a folder URI (empty when it does not exist), by name."""
    fs, path = filesystem_for(uri)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {posixpath.basename(i.path): i.size for i in info if i.type == pafs.FileType.File}


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


def read_text(uri: str) -> str | None:
    """One small file's text, or None when it does not exist."""
    fs, path = filesystem_for(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def delete_folder(uri: str) -> None:
    """Remove a folder and everything under it; nothing when it does not exist."""
    fs, path = filesystem_for(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)

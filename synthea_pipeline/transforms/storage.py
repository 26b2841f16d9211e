"""Object storage under one root, a local folder or s3://bucket/prefix, behind one small interface: list with a
version per object, read and write small objects, upload a file with its content verified, delete.

Bulk data goes through pyarrow filesystems (`lake.filesystem_for`); this interface is for what needs object
metadata (the upload sensor's listings, ETags) or verified uploads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from synthea_pipeline.transforms.lake import aws_client

PART_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    """`key` is relative to the storage root; `version` changes whenever the object is rewritten (the S3 ETag,
    or size and nanosecond mtime locally), so a listing can tell a rewrite from an untouched object."""

    key: str
    size: int
    version: str


@dataclass(frozen=True)
class FileDigest:
    """What a file's content must hash to once stored: SHA-256 for the manifest, the S3 ETag for verification
    (None when the storage does not check one)."""

    name: str
    size: int
    sha256: str
    etag: str | None


class UploadVerificationError(Exception):
    pass


def digest_file(path: str, part_size: int = PART_SIZE, with_etag: bool = True) -> FileDigest:
    """SHA-256 and, `with_etag`, the ETag S3 computes for this file uploaded in `part_size` parts, in one read.
    The ETag's MD5 costs twice the SHA-256 here (SHA instructions), so local storage skips it."""
    sha256 = hashlib.sha256()
    part_md5s: list[bytes] = []
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(part_size):
            sha256.update(chunk)
            if with_etag:
                part_md5s.append(hashlib.md5(chunk).digest())
            size += len(chunk)
    if not with_etag:
        etag = None
    elif size < part_size:
        etag = part_md5s[0].hex() if part_md5s else hashlib.md5(b"").hexdigest()
    else:
        etag = f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
    return FileDigest(os.path.basename(path), size, sha256.hexdigest(), etag)


class LocalStorage:
    """A local folder. Writes go to a temporary name and are renamed into place, so readers never see half a
    file."""

    verifies_etag = False

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def uri(self, key: str = "") -> str:
        return os.path.join(self.root, key) if key else self.root

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        base = self.uri(prefix.rstrip("/"))
        for folder, _, names in os.walk(base):
            for name in sorted(names):
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                yield StoredObject(key, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")

    def list_children(self, prefix: str = "") -> tuple[list[StoredObject], list[str]]:
        """Objects directly under `prefix` and the names of the folders there."""
        objects, folders = [], []
        try:
            entries = sorted(os.scandir(self.uri(prefix.rstrip("/"))), key=lambda e: e.name)
        except FileNotFoundError:
            return [], []
        for entry in entries:
            if entry.is_dir():
                folders.append(entry.name)
            elif entry.is_file():
                stat = entry.stat()
                key = f"{prefix.rstrip('/')}/{entry.name}".lstrip("/")
                objects.append(StoredObject(key, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}"))
        return objects, folders

    def read_bytes(self, key: str) -> bytes:
        with open(self.uri(key), "rb") as handle:
            return handle.read()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.uri(key)
        temp = self._temp(path)
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)

    def upload_file(self, path: str, key: str, digest: FileDigest, part_size: int = PART_SIZE) -> None:
        target = self.uri(key)
        temp = self._temp(target)
        shutil.copyfile(path, temp)
        size = os.path.getsize(temp)
        if size != digest.size:
            os.remove(temp)
            raise UploadVerificationError(f"{key}: wrote {size} bytes, the file has {digest.size}")
        os.replace(temp, target)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.uri(key))

    @staticmethod
    def _temp(path: str) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")


class S3Storage:
    """An S3 bucket prefix through boto3. The client is built on first use (credentials and endpoint, e.g.
    AWS_ENDPOINT_URL for a local stand-in, come from the environment then, never at import)."""

    verifies_etag = True

    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = aws_client("s3")
        return self._client

    def uri(self, key: str = "") -> str:
        return "s3://" + "/".join(p for p in (self.bucket, self.prefix, key) if p)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _pages(self, prefix: str, **options) -> Iterator[dict]:
        full = self._key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        yield from paginator.paginate(Bucket=self.bucket, Prefix=full, **options)

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object under `prefix`, page by page; folder markers (keys ending in '/') are not objects."""
        for page in self._pages(prefix.rstrip("/") + "/" if prefix else ""):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    yield StoredObject(self._relative(item["Key"]), item["Size"], item["ETag"].strip('"'))

    def list_children(self, prefix: str = "") -> tuple[list[StoredObject], list[str]]:
        objects, folders = [], []
        start = prefix.rstrip("/") + "/" if prefix else ""
        for page in self._pages(start, Delimiter="/"):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    objects.append(StoredObject(self._relative(item["Key"]), item["Size"], item["ETag"].strip('"')))
            for common in page.get("CommonPrefixes", []):
                folders.append(common["Prefix"].rstrip("/").rsplit("/", 1)[-1])
        return objects, folders

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.uri(key)) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload_file(self, path: str, key: str, digest: FileDigest, part_size: int = PART_SIZE) -> None:
        """Uploads in parts of `part_size` above that size and checks the stored ETag against the file's."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        self.client.upload_file(path, self.bucket, self._key(key), Config=config)
        stored = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        etag = stored["ETag"].strip('"')
        if stored["ContentLength"] != digest.size or etag != digest.etag:
            raise UploadVerificationError(
                f"{self.uri(key)}: stored object (size {stored['ContentLength']}, ETag {etag}) does not match "
                f"the file (size {digest.size}, ETag {digest.etag})"
            )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


Storage = LocalStorage | S3Storage


def storage_for(root: str) -> Storage:
    """The storage for a root URI: `s3://bucket/prefix` or a local folder."""
    if root.startswith("s3://"):
        bucket, _, prefix = root[len("s3://") :].partition("/")
        return S3Storage(bucket, prefix)
    return LocalStorage(root)

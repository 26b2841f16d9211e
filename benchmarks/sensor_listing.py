"""How long one upload-sensor tick takes on a `source/` prefix holding 100k objects, against a moto S3 server
over HTTP, next to a plain paginated listing of every object under the prefix (the reference, same process).

    .venv/bin/python benchmarks/sensor_listing.py [--uploads 5000] [--files 19]

moto's server scans the whole bucket for every list request, so request counts matter more here than on S3."""

import argparse
import json
import logging
import os
import time

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

from synthea_pipeline.transforms.storage import S3Storage
from synthea_pipeline.transforms.uploads import UploadWatcher, content_checksum

BUCKET = "bench-lake"


def populate(uploads: int, files: int, first: int = 0) -> None:
    """Objects are put straight into the server's store (fast); every read below goes over HTTP."""
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for n in range(first, first + uploads):
        upload = f"upload-{n:05d}"
        entries = []
        for f in range(files):
            body = f"Id,N\n{n},{f}\n".encode()
            backend.put_object(BUCKET, f"source/{upload}/table{f:02d}.csv", body)
            entries.append({"name": f"table{f:02d}.csv", "size": len(body), "sha256": "0" * 64})
        manifest = {"upload_id": upload, "checksum": content_checksum(entries), "files": entries}
        backend.put_object(BUCKET, f"source/{upload}.manifest.json", json.dumps(manifest).encode())


def timed(action):
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=5000)
    parser.add_argument("--files", type=int, default=19)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    populate(args.uploads, args.files)
    storage = S3Storage(BUCKET, "source")
    watcher = UploadWatcher(storage, quiet_seconds=300)

    flat_seconds, objects = timed(lambda: sum(1 for _ in storage.list_objects("")))
    print(f"{objects} objects under source/ ({args.uploads} uploads)")
    print(f"reference: one paginated listing of every object: {flat_seconds:.1f} s")

    cold_seconds, cold = timed(lambda: watcher.tick(None, time.time()))
    print(f"first tick on an unseen prefix: {cold_seconds:.1f} s, {len(cold.ready)} uploads handed out, "
          f"{len(cold.skipped)} left for later ticks")

    listing, _ = storage.list_children("")
    steady = {"done": {o.key[: -len(".manifest.json")]: [o.version, json.loads(storage.read_bytes(o.key))["checksum"]]
                       for o in listing if o.key.endswith(".manifest.json")}, "pending": {}}
    steady_seconds, outcome = timed(lambda: watcher.tick(json.dumps(steady), time.time()))
    assert not outcome.ready and outcome.unchanged == args.uploads
    print(f"steady tick, every upload already handed out: {steady_seconds:.1f} s "
          f"({steady_seconds / flat_seconds:.2f}x the reference)")

    populate(50, args.files, first=args.uploads)
    landing_seconds, outcome = timed(lambda: watcher.tick(json.dumps(steady), time.time()))
    assert len(outcome.ready) == 50
    print(f"tick with 50 new uploads landed: {landing_seconds:.1f} s "
          f"({landing_seconds / flat_seconds:.2f}x the reference), 50 handed out")
    server.stop()


if __name__ == "__main__":
    main()

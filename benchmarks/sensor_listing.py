"""How long one upload-sensor tick takes on a `source/` prefix holding 100k objects, against a moto S3 server
over HTTP, next to a plain paginated listing of every object under the prefix (the reference, same process); and
how many ticks of the sensor itself, with the default time budget, a burst of new uploads takes.

    .venv/bin/python benchmarks/sensor_listing.py [--uploads 5000] [--files 19] [--burst 300] 2>/dev/null

moto's server scans the whole bucket for every list request, so request counts matter more here than on S3. The
sensor's tick log goes to stderr."""

import argparse
import functools
import json
import logging
import os
import time

import boto3
from dagster import DagsterInstance, build_sensor_context
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

from synthea_pipeline.resources.lake import LakeResource
from synthea_pipeline.sensors import INSPECTION_SHARE, upload_sensor
from synthea_pipeline.settings import UPLOAD_SENSOR_BUDGET_SECONDS
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
    parser.add_argument("--burst", type=int, default=300)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    populate(args.uploads, args.files)
    storage = S3Storage(BUCKET, "source")
    watcher = UploadWatcher(storage, quiet_seconds=300)

    flat_seconds, objects = timed(lambda: sum(1 for _ in storage.list_objects("")))
    print(f"{objects} objects under source/ ({args.uploads} uploads)")
    print(f"reference: one paginated listing of every object: {flat_seconds:.1f} s")

    budget = int(UPLOAD_SENSOR_BUDGET_SECONDS.default)
    inspecting = budget * INSPECTION_SHARE
    cold_seconds, cold = timed(lambda: watcher.tick(None, time.time(), deadline=time.monotonic() + inspecting))
    print(
        f"first tick on an unseen prefix, inspecting for at most {inspecting:g} s of the sensor's {budget} s "
        f"budget: {cold_seconds:.1f} s, {len(cold.ready)} uploads handed out, {len(cold.skipped)} left for later "
        "ticks"
    )

    listing, _ = storage.list_children("")
    steady = {
        "done": {
            o.key[: -len(".manifest.json")]: [o.version, json.loads(storage.read_bytes(o.key))["checksum"]]
            for o in listing
            if o.key.endswith(".manifest.json")
        },
        "pending": {},
    }
    steady_seconds, outcome = timed(lambda: watcher.tick(json.dumps(steady), time.time()))
    assert not outcome.ready and outcome.unchanged == args.uploads
    print(
        f"steady tick, every upload already handed out: {steady_seconds:.1f} s "
        f"({steady_seconds / flat_seconds:.2f}x the reference)"
    )

    populate(50, args.files, first=args.uploads)
    landing_seconds, outcome = timed(lambda: watcher.tick(json.dumps(steady), time.time()))
    assert len(outcome.ready) == 50
    print(
        f"tick with 50 new uploads landed: {landing_seconds:.1f} s "
        f"({landing_seconds / flat_seconds:.2f}x the reference), 50 handed out"
    )

    populate(args.burst, args.files, first=args.uploads + 50)
    lake = LakeResource(root=f"s3://{BUCKET}")
    cursor, requested, tick_seconds = outcome.cursor, [], []
    with DagsterInstance.ephemeral() as instance:
        while len(requested) < args.burst:
            context = build_sensor_context(instance=instance, cursor=cursor, resources={"lake": lake})
            seconds, result = timed(functools.partial(upload_sensor, context))
            requested += [r.partition_key for r in result.run_requests]
            cursor = result.cursor
            tick_seconds.append(seconds)
    assert len(set(requested)) == len(requested) == args.burst
    print(
        f"burst of {args.burst} new uploads: {len(tick_seconds)} sensor ticks with the default {budget} s budget "
        f"(longest {max(tick_seconds):.1f} s), each upload requested once"
    )
    server.stop()


if __name__ == "__main__":
    main()

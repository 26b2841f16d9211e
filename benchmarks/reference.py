"""The reference: one plain PySpark-on-Sail script doing the same CSV -> typed, deduplicated Parquet work as
the pipeline (contract types, trimmed text, duplicates dropped, zstd), without layers, Dagster or checks."""

from __future__ import annotations

import sys
from pathlib import Path

from pysail.spark import SparkConnectServer
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from synthea_pipeline.tables import TABLES


def main(source: Path, out: Path) -> None:
    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    spark = SparkSession.builder.remote(f"sc://127.0.0.1:{server.listening_address[1]}").getOrCreate()
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.ansi.enabled", "false")
    for path in sorted(source.glob("*.csv")):
        table = TABLES[path.stem]
        header = path.open().readline().strip().split(",")
        mapping = table.match_header(header).mapping
        frame = spark.read.csv(str(path), header=True, schema=", ".join(f"`{h}` string" for h in header))
        columns = []
        for name, canonical in mapping.items():
            column = table.column_index[canonical]
            value = F.when(F.trim(F.col(f"`{name}`")) == "", None).otherwise(F.trim(F.col(f"`{name}`")))
            if column.type in ("timestamp", "year_or_timestamp"):
                value = F.to_timestamp(value, "yyyy-MM-dd'T'HH:mm:ss'Z'")
            elif column.type == "date":
                value = F.to_date(value, "yyyy-MM-dd")
            elif column.spark_type != "string":
                value = F.expr(f"try_cast(trim(`{name}`) as {column.spark_type})")
            columns.append(value.alias(canonical))
        deduplicated = frame.select(columns).dropDuplicates()
        deduplicated.write.mode("overwrite").option("compression", "zstd").parquet(str(out / table.name))
    server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""The `local-jvm` engine: the layers run in this process on local JVM Spark with the Iceberg jars Glue 5.0
ships, a stand-in for Glue and EMR on a laptop."""

from __future__ import annotations

import os
import sys

from dagster_pyspark import LazyPySparkResource
from pyspark.sql import SparkSession

from synthea_pipeline.engines.engine import InProcessEngine
from synthea_pipeline.transforms.iceberg import GLUE_CATALOG, HADOOP_CATALOG
from synthea_pipeline.transforms.lake import Lake, aws_endpoint, aws_region
from synthea_pipeline.transforms.staging import SPARK_CONF

CONNECT_MODE_ENV = "SPARK_CONNECT_MODE_ENABLED"
JVM_PACKAGES = (
    "org.apache.iceberg:iceberg-spark-runtime-3.5_2.12:1.7.1",
    "org.apache.iceberg:iceberg-aws-bundle:1.7.1",
    "org.apache.hadoop:hadoop-aws:3.3.4",
)
"""What Glue 5.0 ships: Spark 3.5.4 with Iceberg 1.7.1 (and its AWS bundle: the Glue catalog, S3FileIO).
hadoop-aws is pinned to the Hadoop that pyspark 3.5 bundles (3.3.4; Glue 5.0 runs 3.4.1), which it must match.
JVM Spark loads them from Maven Central on first use; all of them always, since a JVM takes its jars once."""


def jvm_iceberg_conf(lake: Lake) -> dict[str, str]:
    """JVM Spark settings for the lake's Iceberg tables: the jars, Iceberg's SQL extensions (DELETE, MERGE), and
    the catalog the layers name tables through (`transforms.iceberg`). A local lake: the Hadoop catalog `lake`
    whose warehouse is its root. A lake on S3: the catalog `glue`, Iceberg's GlueCatalog with S3FileIO, as on
    Glue 5 and EMR, and `s3://` read through hadoop-aws (the raw Parquet); both go to AWS_ENDPOINT_URL when set.
    Iceberg's vectorized (Arrow) Parquet reader is off: with pyspark 3.5's jars it corrupted the JVM's memory
    here (SIGSEGV in the symbol table)."""
    conf = {
        "spark.jars.packages": ",".join(JVM_PACKAGES),
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        "spark.sql.iceberg.vectorization.enabled": "false",
    }
    if not lake.on_s3:
        return {
            **conf,
            f"spark.sql.catalog.{HADOOP_CATALOG}": "org.apache.iceberg.spark.SparkCatalog",
            f"spark.sql.catalog.{HADOOP_CATALOG}.type": "hadoop",
            f"spark.sql.catalog.{HADOOP_CATALOG}.warehouse": os.path.abspath(lake.root),
        }
    glue = f"spark.sql.catalog.{GLUE_CATALOG}"
    conf.update(
        {
            glue: "org.apache.iceberg.spark.SparkCatalog",
            f"{glue}.catalog-impl": "org.apache.iceberg.aws.glue.GlueCatalog",
            f"{glue}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
            f"{glue}.warehouse": lake.root,
            f"{glue}.client.region": aws_region(),
            "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        }
    )
    conf.update({f"spark.hadoop.fs.s3a.{key}": value for key, value in aws_credentials().items()})
    glue_endpoint, s3_endpoint = aws_endpoint("glue"), aws_endpoint("s3")
    if glue_endpoint:
        conf[f"{glue}.glue.endpoint"] = glue_endpoint
    if s3_endpoint:
        conf.update(
            {
                f"{glue}.s3.endpoint": s3_endpoint,
                f"{glue}.s3.path-style-access": "true",
                "spark.hadoop.fs.s3a.endpoint": s3_endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": str(s3_endpoint.startswith("https")).lower(),
            }
        )
    return conf


def aws_credentials() -> dict[str, str]:
    """This process's AWS credentials (any source boto3 reads: environment, profile, SSO, role) in hadoop-aws's
    terms. The JVM cannot be relied on to find them itself: it keeps the environment it was started with."""
    import boto3

    credentials = boto3.Session().get_credentials()
    if credentials is None:
        return {}
    frozen = credentials.get_frozen_credentials()
    found = {"access.key": frozen.access_key, "secret.key": frozen.secret_key}
    if frozen.token:
        found.update(
            {
                "session.token": frozen.token,
                "aws.credentials.provider": "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
            }
        )
    return found


def share_aws_credentials(session: SparkSession) -> None:
    """Hands this process's AWS credentials to the JVM's AWS SDK v2 clients (Iceberg's Glue catalog and S3FileIO)
    as the system properties their default credentials chain reads first."""
    credentials = aws_credentials()
    system = session._jvm.java.lang.System
    for key, value in (
        ("aws.accessKeyId", "access.key"),
        ("aws.secretAccessKey", "secret.key"),
        ("aws.sessionToken", "session.token"),
    ):
        if value in credentials:
            system.setProperty(key, credentials[value])
        else:
            system.clearProperty(key)


class LocalJvm(InProcessEngine):
    name = "local-jvm"
    description = "local JVM Spark with Glue 5.0's Iceberg, a stand-in for Glue and EMR"
    local_catalog = "hadoop"

    def start(self, lake: Lake) -> tuple[SparkSession, None]:
        """dagster-pyspark builds the session with JVM Spark's Iceberg catalog for this lake."""
        os.environ.pop(CONNECT_MODE_ENV, None)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        session = LazyPySparkResource(
            spark_config={
                "spark.master": "local[*]",
                "spark.app.name": "synthea-pipeline",
                **SPARK_CONF,
                **jvm_iceberg_conf(lake),
                "spark.ui.enabled": "false",
                "spark.driver.memory": "4g",
            }
        ).spark_session
        if lake.on_s3:
            share_aws_credentials(session)
        return session, None


LOCAL_JVM = LocalJvm()

"""What a remote (Glue, EMR Serverless) job run of a Spark layer (staging, marts, omop) is made of: the entry
script, the code package and the Spark settings for the lake's Iceberg tables. Shared by `deploy`, which creates
the jobs, and the Spark resource, which runs them."""

from __future__ import annotations

from synthea_pipeline.transforms.iceberg import GLUE_CATALOG

SPARK_LAYERS = ("staging", "marts", "omop")
PACKAGE_ZIP = "synthea_pipeline.zip"
EMR_ICEBERG_JAR = "/usr/share/aws/iceberg/lib/iceberg-spark3-runtime.jar"
"""Where EMR 7 ships Iceberg; EMR Serverless leaves it off the classpath unless `spark.jars` names it."""


def entry_script(layer: str) -> str:
    """The file name of a layer's Pipes entry script, in the package and where `deploy` uploads it."""
    return f"{layer}_job.py"


def glue_job_name(prefix: str, layer: str) -> str:
    return f"{prefix}-{layer}"


def iceberg_confs(bucket: str) -> list[str]:
    """The Spark settings (key=value) the jobs need for the lake's Iceberg tables: Iceberg's SQL extensions
    (DELETE, MERGE) and the catalog `glue` the layers name tables through (`transforms.iceberg`), Iceberg's
    GlueCatalog with S3FileIO, as `engines.local_jvm.jvm_iceberg_conf` sets up locally."""
    catalog = f"spark.sql.catalog.{GLUE_CATALOG}"
    return [
        "spark.sql.extensions=org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        f"{catalog}=org.apache.iceberg.spark.SparkCatalog",
        f"{catalog}.catalog-impl=org.apache.iceberg.aws.glue.GlueCatalog",
        f"{catalog}.io-impl=org.apache.iceberg.aws.s3.S3FileIO",
        f"{catalog}.warehouse=s3://{bucket}/",
    ]


def glue_conf_argument(bucket: str) -> str:
    """Glue accepts a single `--conf` job argument: its value chains the other settings with ` --conf `."""
    return " --conf ".join(iceberg_confs(bucket))


def emr_iceberg_parameters(bucket: str) -> str:
    """The `sparkSubmitParameters` an EMR Serverless run needs for the Iceberg tables: the jar, then the settings."""
    return " ".join(f"--conf {conf}" for conf in (f"spark.jars={EMR_ICEBERG_JAR}", *iceberg_confs(bucket)))

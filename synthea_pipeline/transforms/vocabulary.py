"""The OMOP standardized vocabularies, taken from a folder (or S3 prefix) as OHDSI Athena downloads it and loaded
into the lake once: each vocabulary table an Iceberg table of the `omop` layer, partitioned by `vocabulary_load`
(a fingerprint of the files), so a new download is a new load and the OMOP build that first uses it switches
readers to it with its own commit.

Athena writes tab-separated files without quoting (`CONCEPT.csv`, `CONCEPT_RELATIONSHIP.csv`, ...; dates as
`YYYYMMDD`); comma-separated files with quotes (dbt-synthea's `concept_seed.csv`, dates `YYYY-MM-DD`) are read
too. A row whose key does not parse is left out and counted."""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

from pyarrow import fs as pafs
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from synthea_pipeline.transforms.cdm import cdm_table
from synthea_pipeline.transforms.iceberg import OMOP_LAYER, IcebergTables
from synthea_pipeline.transforms.lake import Lake, filesystem_for

VOCABULARY_TABLES = (
    "concept",
    "vocabulary",
    "domain",
    "concept_class",
    "concept_relationship",
    "relationship",
    "concept_synonym",
    "concept_ancestor",
    "drug_strength",
    "source_to_concept_map",
)
REQUIRED_VOCABULARY = ("concept", "concept_relationship")
"""Without these no code can reach a standard concept: a folder lacking them is not a vocabulary."""
LOAD_COLUMN = "vocabulary_load"
SAMPLE_VOCABULARY = "sample"
"""The setting's value naming the shipped subset (`samples/omop_vocabulary/`: dbt-synthea's seed vocabulary)."""
NO_VOCABULARY = "none"
"""The setting's value that skips the OMOP tables."""
FINGERPRINT_BYTES = 1 << 20
HOW_TO_GET_ONE = (
    "download the vocabularies from OHDSI Athena (https://athena.ohdsi.org: SNOMED, LOINC, RxNorm, RxNorm "
    "Extension, CVX, UCUM and their dependencies), unzip the download and set SYNTHEA_OMOP_VOCABULARY to its "
    "folder or s3:// prefix (`sample`, the default, is the small subset shipped for the sample exports)"
)


class VocabularyError(ValueError):
    """The vocabulary setting names something that is not a vocabulary download."""


@dataclass(frozen=True)
class VocabularyFiles:
    """The files of one vocabulary download, by table, and the load they make."""

    location: str
    files: dict[str, str]
    fingerprint: str

    @property
    def load_id(self) -> str:
        return self.fingerprint[:20]


def sample_vocabulary() -> str:
    """The shipped subset's folder."""
    import synthea_pipeline

    return posixpath.join(synthea_pipeline.__path__[0], "samples", "omop_vocabulary")


def vocabulary_location(setting: str, lake: Lake) -> str:
    """Where the layer reads the vocabulary the setting names: the folder or S3 prefix itself, or for `sample`
    the shipped subset, copied to `<lake>/vocabulary/sample/` first when the lake is on S3 (a job on AWS cannot
    read this machine's files)."""
    setting = setting.strip() or SAMPLE_VOCABULARY
    if setting != SAMPLE_VOCABULARY:
        return setting
    if not lake.on_s3:
        return sample_vocabulary()
    target = lake.uri("vocabulary", SAMPLE_VOCABULARY)
    fs, path = filesystem_for(target)
    local = pafs.LocalFileSystem()
    for info in local.get_file_info(pafs.FileSelector(sample_vocabulary())):
        destination = f"{path}/{posixpath.basename(info.path)}"
        if fs.get_file_info(destination).size != info.size:
            pafs.copy_files(info.path, destination, source_filesystem=local, destination_filesystem=fs)
    return target


def _table_of(name: str) -> str | None:
    """The vocabulary table a file holds: `CONCEPT.csv`, `concept.csv`, `concept_seed.csv`, `CONCEPT.tsv`."""
    stem, _, extension = name.lower().rpartition(".")
    if extension not in ("csv", "tsv", "txt"):
        return None
    stem = stem.removesuffix("_seed")
    return stem if stem in VOCABULARY_TABLES else None


def find_vocabulary(location: str) -> VocabularyFiles:
    """The vocabulary files under `location` (a folder or an s3:// prefix; `sample` for the shipped subset) and
    their fingerprint: names, sizes and the first MiB of each. Raises `VocabularyError` when the concept or
    relationship table is missing."""
    location = sample_vocabulary() if location == SAMPLE_VOCABULARY else location
    fs, path = filesystem_for(location)
    listing = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    found: dict[str, pafs.FileInfo] = {}
    for info in sorted(listing, key=lambda i: i.path):
        table = _table_of(posixpath.basename(info.path))
        if info.type == pafs.FileType.File and table:
            if table in found:
                raise VocabularyError(
                    f"{location}: two files hold the {table} table ({posixpath.basename(found[table].path)}, "
                    f"{posixpath.basename(info.path)}); keep one"
                )
            found[table] = info
    if missing := [t for t in REQUIRED_VOCABULARY if t not in found]:
        raise VocabularyError(
            f"{location} is not an OMOP vocabulary download: no {' or '.join(t.upper() + '.csv' for t in missing)}; "
            + HOW_TO_GET_ONE
        )
    digest = hashlib.sha256()
    for _, info in sorted(found.items()):
        digest.update(f"{posixpath.basename(info.path)}\t{info.size}\n".encode())
        with fs.open_input_stream(info.path) as stream:
            digest.update(stream.read(FINGERPRINT_BYTES))
    prefix = location.rstrip("/")
    files = {t: f"{prefix}/{posixpath.basename(i.path)}" for t, i in found.items()}
    return VocabularyFiles(location, files, digest.hexdigest())


def _separator(uri: str) -> str:
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as stream:
        header = stream.read(4096).split(b"\n", 1)[0]
    return "\t" if b"\t" in header else ","


def _typed(value: Column, spark_type: str) -> Column:
    """A text value as its CDM type: empty is null; dates as `YYYYMMDD` (Athena) or ISO."""
    text = F.nullif(F.trim(value), F.lit(""))
    if spark_type == "date":
        return F.when(text.rlike("^[0-9]{8}$"), F.to_date(text, "yyyyMMdd")).otherwise(F.to_date(text))
    return text.cast(spark_type)


def read_vocabulary_table(spark: SparkSession, uri: str, table: str) -> DataFrame:
    """One vocabulary file as its CDM table's columns (absent ones null), and `_parsed`: whether every required
    non-text field that holds a value parsed (a row that fails is left out and counted)."""
    separator = _separator(uri)
    reader = spark.read.option("header", "true").option("sep", separator)
    # Athena's tab-separated files are not quoted (a name may hold a quote); comma-separated ones double quotes
    reader = reader.option("quote", "\u0000") if separator == "\t" else reader.option("escape", '"')
    text = reader.csv(uri)
    present = {c.strip().lower(): c for c in text.columns}
    spec = cdm_table(table)
    columns = []
    parsed = F.lit(True)
    for field in spec.fields:
        source = present.get(field.name)
        value = _typed(F.col(f"`{source}`"), field.spark_type) if source else F.lit(None).cast(field.spark_type)
        columns.append(value.alias(field.name))
        if source and field.required and field.spark_type != "string":
            parsed = parsed & (value.isNotNull() | F.nullif(F.trim(F.col(f"`{source}`")), F.lit("")).isNull())
    return text.select(*columns, parsed.alias("_parsed"))


def load_vocabulary(spark: SparkSession, lake: IcebergTables, files: VocabularyFiles) -> dict[str, dict[str, int]]:
    """Append every vocabulary table of the download under its load id (absent optional tables stay empty);
    returns rows read and rows left out (a key that does not parse) per table."""
    counts = {}
    for table in VOCABULARY_TABLES:
        identifier = lake.ensure(
            spark, OMOP_LAYER, table, f"{cdm_table(table).columns}, {LOAD_COLUMN} string", (LOAD_COLUMN,)
        )
        if table not in files.files:
            counts[table] = {"rows": 0, "left_out": 0}
            continue
        marked = read_vocabulary_table(spark, files.files[table], table)
        tally = marked.groupBy("_parsed").count().collect()
        left_out = sum(r["count"] for r in tally if not r["_parsed"])
        lake.append(marked.where("_parsed").drop("_parsed").withColumn(LOAD_COLUMN, F.lit(files.load_id)), identifier)
        counts[table] = {"rows": sum(r["count"] for r in tally), "left_out": left_out}
    return counts


def vocabulary_rows(spark: SparkSession, lake: IcebergTables, table: str, load_id: str) -> DataFrame:
    """One load's rows of a vocabulary table, without the load column."""
    identifier = lake.open(spark, OMOP_LAYER, table)
    return spark.table(identifier).where(F.col(LOAD_COLUMN) == load_id).drop(LOAD_COLUMN)

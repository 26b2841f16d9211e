"""The layers' reports (Pipes metadata: `{"raw_value", "type"}`) as Dagster metadata, for the layers that run in
this process; a Pipes session does the same for the ones that run on AWS."""

from typing import Any

from dagster import MetadataValue, TableColumn, TableColumnConstraints, TableSchema

SIMPLE_TYPES = {
    "path": MetadataValue.path,
    "text": MetadataValue.text,
    "bool": MetadataValue.bool,
    "int": MetadataValue.int,
    "float": MetadataValue.float,
    "json": MetadataValue.json,
}


def column_schema(schema: dict) -> MetadataValue:
    """A Pipes `table_schema` value (columns with name, type, description, constraints) as Dagster's."""
    return MetadataValue.table_schema(
        TableSchema(
            columns=[
                TableColumn(
                    column["name"],
                    column["type"],
                    description=column.get("description"),
                    constraints=TableColumnConstraints(**column.get("constraints", {})),
                )
                for column in schema["columns"]
            ]
        )
    )


def metadata_value(entry: dict[str, Any]) -> MetadataValue:
    kind, value = entry["type"], entry["raw_value"]
    if kind == "table_schema":
        return column_schema(value)
    if kind == "null":
        return MetadataValue.null()
    return SIMPLE_TYPES[kind](value)


def dagster_metadata(external: dict[str, dict[str, Any]]) -> dict[str, MetadataValue]:
    return {key: metadata_value(entry) for key, entry in external.items()}

"""Quoting for the SQL this project writes: string literals, and identifiers in double quotes for the catalog's
engines (Athena/Trino, DuckDB) or in backticks for Spark."""


def literal(text: str) -> str:
    """A string literal: `it's` as `'it''s'`."""
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A column or table name for Athena (Trino) and DuckDB: `name` as `"name"`."""
    return '"' + name.replace('"', '""') + '"'


def spark_identifier(name: str) -> str:
    """A column name for Spark SQL, which quotes with backticks: `a b` as `` `a b` ``."""
    return "`" + name.replace("`", "``") + "`"

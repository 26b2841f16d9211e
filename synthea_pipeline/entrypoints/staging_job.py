"""Pipes entry script of the staging layer (the raw pass of each table, then its staging): the Glue job script /
EMR Serverless entry point that `synthea-pipeline deploy` uploads. `python staging_job.py --standalone --help`
runs it without Dagster."""

import sys

from synthea_pipeline.entrypoints.pipes_job import main

if __name__ == "__main__":
    sys.exit(main("staging"))

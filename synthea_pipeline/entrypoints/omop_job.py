"""Pipes entry script of the OMOP layer: the Glue job script / EMR Serverless entry point that
`synthea-pipeline deploy` uploads. `python omop_job.py --standalone --help` runs it without Dagster."""

import sys

from synthea_pipeline.entrypoints.pipes_job import main

if __name__ == "__main__":
    sys.exit(main("omop"))

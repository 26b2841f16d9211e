"""Pipes entry script of the marts layer: the Glue job script / EMR Serverless entry point that
`synthea-pipeline deploy` uploads. `python marts_job.py --standalone --help` runs it without Dagster."""

import sys

from synthea_pipeline.entrypoints.pipes_job import main

if __name__ == "__main__":
    sys.exit(main("marts"))

"""The Spark engines, registered here and nowhere else: the Spark resource, the settings (the engine choice and
each engine's own settings) and the command line's `--engine` choices all read `ENGINES`. An engine is one module
of this package (an `InProcessEngine` or a `RemoteEngine`, see `engine.py`) plus its line below."""

from synthea_pipeline.engines.emr_serverless import EMR_SERVERLESS
from synthea_pipeline.engines.engine import Engine
from synthea_pipeline.engines.glue import GLUE
from synthea_pipeline.engines.local_jvm import LOCAL_JVM
from synthea_pipeline.engines.sail import SAIL

ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        SAIL,
        LOCAL_JVM,
        GLUE,
        EMR_SERVERLESS,
    )
}

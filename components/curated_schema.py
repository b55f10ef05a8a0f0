"""CuratedSchemaGen: the committed schema as a pipeline artifact, keyed by its content.

Like ImportSchemaGen, but the schema travels as the component's parameter instead of
a file path. TFX caches a node on its parameters, so with ImportSchemaGen an edited
schema file at the same path is silently replaced by the cached, stale copy; here
any edit is a new parameter value and re-executes. On Kubeflow the spec carries the
schema, so the file need not exist in the image.
"""

import os

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils

SCHEMA_FILE = "schema.pbtxt"  # the name SchemaGen and ImportSchemaGen write


def parse_schema(text: str, source: str) -> schema_pb2.Schema:
    try:
        return text_format.Parse(text, schema_pb2.Schema())
    except text_format.ParseError as e:
        raise ValueError(f"{source}: not a valid schema: {e}") from e


@component
def CuratedSchemaGen(
    schema: OutputArtifact[standard_artifacts.Schema],
    schema_text: Parameter[str],
    source: Parameter[str],
) -> None:
    """Write the schema given as text (from the file named `source`) as a Schema artifact."""
    io_utils.write_pbtxt_file(os.path.join(schema.uri, SCHEMA_FILE),
                              parse_schema(schema_text, source))

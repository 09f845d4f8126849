"""Print the JSON Schema of the control messages: ``python -m pipegate_protocol.schema``."""

from ._schema import protocol_json_schema

if __name__ == "__main__":
    print(protocol_json_schema(), end="")

"""The external contract of the bus (SPEC §3, §4): payload models, topics, strict JSON, AsyncAPI.

`wire.py` the pydantic models (the single source of docs/schemas/ and docs/asyncapi.json);
`topics.py` the topic layout; `strict_json.py` the one parser of what a backend sends; `asyncapi.py`
the document built from the models.
"""

"""Settings: the dataclasses and the YAML parser (parser.py) and where the files live (files.py)."""

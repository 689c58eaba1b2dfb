"""The one YAML reader for problem files: PyYAML's safe loader, with YAML 1.2's numbers.

PyYAML implements YAML 1.1, whose floats need a dot and a signed exponent: `1e-4`, `1E5` and `-.5` are strings
there. The service takes only JSON numbers where its document says `number` (a string is a 400), so an
instructor's `rtol: 1e-4` would be refused. YAML 1.2's core schema reads them as floats; its float pattern is
added to a SafeLoader subclass (the common recipe), after PyYAML's own resolvers, so integers stay integers.
Imports PyYAML: import this module only when a YAML file is read (PyYAML is optional for JSON files).
"""

from __future__ import annotations

import re

import yaml

# YAML 1.2 core schema float (https://yaml.org/spec/1.2.2/#1023-core-schema), .inf/.nan left to YAML 1.1's
YAML12_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")


class ProblemLoader(yaml.SafeLoader):
    """yaml.SafeLoader, plus YAML 1.2's float forms (1e-4, 1E5, -.5, 1.5e3) as floats."""


# appended to each first character's resolvers: tried after PyYAML's int ("3" stays 3) and YAML 1.1 float
ProblemLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))


def load_yaml(text: str):
    """A YAML document with ProblemLoader (yaml.YAMLError when it does not parse)."""
    return yaml.load(text, Loader=ProblemLoader)  # noqa: S506 - ProblemLoader is a SafeLoader

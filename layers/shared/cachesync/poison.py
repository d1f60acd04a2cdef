"""The error every layer of the record path raises for a record that can never be applied.

Its own module, imported by the value decoders and the projections alike, so neither
depends on the other (nor on the configuration that names them).
"""

from __future__ import annotations


class PoisonRecord(ValueError):
    """A record that can never be applied; it goes to the dead-letter sink."""

"""Names shared across levels, declared once.

A name that more than one module (or the command line and the library) must agree on lives
here, so no module re-types it and no test is needed to keep copies equal. Importing this
module is free: it holds constants only.
"""

from __future__ import annotations

# Synthetic surfaces (``fracturekit synth --kind``, ``fracturekit demo --kind``). ``mixed``
# draws one of MIXED_KINDS per image; X-rays are a domain of their own.
SYNTH_KINDS: tuple[str, ...] = ("concrete", "asphalt", "rock", "masonry", "xray", "mixed")
MIXED_KINDS: tuple[str, ...] = ("concrete", "asphalt", "rock", "masonry")

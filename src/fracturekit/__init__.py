"""fracturekit: find fractures and cracks in images.

Importing the package is cheap: heavy libraries load inside the functions that need them.
"""

__version__ = "0.1.0"

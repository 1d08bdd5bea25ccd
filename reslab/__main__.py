"""`python -m reslab` runs the command line."""
from .cli import entry

entry()

"""tokensvc's bench suite: a load generator, reference endpoints, result files and comparisons.

`python -m bench --help` lists the commands; bench/README.md explains them.
"""

__version__ = "1.0"

"""The runtime type checker jaxtyping's import hook applies to the library under pytest
(pytest.ini `--jaxtyping-packages=...,qcheck.suite.typechecker.typecheck`).

beartype with the PEP 484 numeric tower, so an int is a valid `float` argument as Python's typing
rules say (a lock timeout of -1, a count passed as a float metric). Named here rather than written
inline because jaxtyping's option parser splits a typechecker expression with arguments wrongly.
"""

from beartype import BeartypeConf, beartype

typecheck = beartype(conf=BeartypeConf(is_pep484_tower=True))

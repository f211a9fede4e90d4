"""``prototype``: a nearest-class-mean strategy for edgetl, written only against its public API.

Registered through the ``edgetl_strategies`` hook of the ``edgetl`` entry-point
group (see pyproject.toml). Importing this module is cheap: torch loads when
the strategy fits.
"""

from edgetl.hookspecs import hookimpl


@hookimpl
def edgetl_strategies(register):
    from edgetl_prototype.strategy import Prototypes

    register(Prototypes())

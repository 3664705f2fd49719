"""The towers tinlt builds, one module per tower family; each module registers the model
names it builds with :mod:`tinlt.models.registry` when it is imported, and
``tinlt.models.builtin`` imports every module here. A new tower is one new module (here, or
in a package of its own listed as a ``tinlt.extensions`` entry point / in ``$TINLT_PLUGINS``).
"""

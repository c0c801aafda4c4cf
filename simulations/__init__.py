"""The simulations and benchmarks (docs/simulations.md, docs/performance.md), as one package.

Each script runs by module name from the repository's root (``python -m simulations.partition``)
and imports its neighbours as ``simulations.<name>``; a child process a script starts runs a
module the same way (:func:`simulations.benchutil.module_command`), so it imports the very
package its parent did.  Not part of the installed wheel: the product never imports it.
"""

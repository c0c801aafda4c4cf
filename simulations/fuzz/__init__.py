"""Fuzzing every input path of a terminal, so the hardening of the decoders never quietly regresses.

    python -m simulations.fuzz --inputs N --seed S [--jobs J] [--targets T ...] [--out DIR]
    python -m simulations.fuzz --replay DIR/yupdate-s1-i1234.json      # run one saved crash input

A hostile or buggy peer, a web page or a damaged file must never stop a terminal.  Each *target*
below generates inputs for one of the paths such input takes - structure-aware (real pycrdt
documents, real frames, messages and bodies built field by field) and mutated (bit flips,
truncation, splicing, duplication, huge varints and counts, deep nesting, wrong types, unknown
keys), valid and invalid mixed so the deep code paths are reached - and feeds them to the real
decoders and to a real terminal:

* ``yupdate`` - Yjs updates (random real documents, merged updates, diffs against state vectors,
  hand-encoded structs, the killers of simulations/hostile.py, huge ones) -> ``check_update``
  against each document shape; what passes is applied with ``host.apply_remote`` to that document
  of a running terminal and read back through the typed models (and ``status``);
* ``sync`` - sync frames -> ``decode_sync``, then what the mesh does next (the step 1 state
  vector into pycrdt, the shape check of a step 2 or update);
* ``control`` - JSON text -> ``decode_control`` (deep, huge numbers, odd escapes, surrogates);
* ``link`` - byte streams -> ``LinkCore.receive``, both roles: an upgrade and a hello followed by
  mutated WebSocket frames, or garbage; it must never raise;
* ``cashier`` - quorum messages with real-looking ledger entries -> ``from_wire``,
  ``report_from_wire`` and ``Cashier.receive`` of a running POS that is its store's only voter;
* ``roster`` - mutations of a really signed roster (re-signed after a body mutation, so the
  parsing behind the signature is reached too) -> ``verify_roster``;
* ``api`` - requests built from the app's own ``/openapi.json`` (then mutated: bodies, content
  types, paths, queries, methods, headers) -> the ASGI app of a running terminal in process.

An outcome is ``refused`` (the documented refusal: ``UpdateRefused``, ``WireError``,
``BadMessage``, ``IdentityError``, a 4xx with a JSON ``{code, message}``...), ``accepted``, or a
**crash**: any other exception (pycrdt's ``PanicException`` too: a Rust panic, and a
``BaseException`` that no ``except Exception`` of the terminal stops), a 5xx or non-JSON error
answer, a storage commit that fails (the disk is fine here: an input got SQLite something it
cannot store), an input that hangs, and a child process that dies.  A SIGSEGV in pycrdt's Rust
code raises nothing - that is why the inputs run in child processes, in batches: a child dying
on a batch is re-run on ever shorter prefixes of that batch (bisection, each in a fresh child)
until the one input that kills it is found.  A crash replaces the terminal before the next
input, and after a Rust panic the rest of the batch runs in a fresh child, so nothing later is
blamed on the state a crash left.

Every input is a function of (seed, target, index) only, every batch starts from a fresh
terminal, and pycrdt's encodings are put in one order (:func:`canonical`), so a seed gives the
same counts whatever ``--jobs`` is.  Crash inputs are saved to ``--out`` (a few per kind of
crash; all are counted), each a JSON file with its target, seed, index, the error (or the dying
child's Python stack) and the input; ``--replay FILE`` runs it again in this process, after the
inputs the crashed terminal took before it when it needs them (``context_start``).

Prints one JSON object: inputs and outcomes per target, crashes grouped by kind, the saved crash
inputs, seconds and inputs per second.  docs/simulations.md ("Fuzzing") records the long run;
tests/test_fuzz.py runs a short one in CI and proves the crash detection on a planted segfault.

The package, by job: :mod:`.settings`; the raw material (:mod:`.values`, :mod:`.documents`,
:mod:`.encoding`); the targets (:mod:`.target` for what they share, :mod:`.peers`, :mod:`.link`,
:mod:`.cashier`, :mod:`.roster`, :mod:`.api`, and :mod:`.targets` naming them all); the
:mod:`.child` processes that run the inputs and the :mod:`.parent` that runs them; ``__main__``.
"""

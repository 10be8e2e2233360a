"""The ``rxcontext`` command (also ``python -m rxcontext``).

::

    rxcontext demo                                  # offline: a reply streamed live and stored
    rxcontext chat "Name three rivers."             # one reply (interactive without a prompt)
    rxcontext contexts [list|show|export|delete|clone]
    rxcontext checkpoints                           # interrupted replies
    rxcontext resume ID                             # finish one
    rxcontext summarize --context NAME              # propose a summary, accept on confirmation

Every command takes ``--db PATH`` (default :func:`default_db`). Output that is not a terminal
is plain text with no redraws, so the commands compose in scripts. Errors a user can meet
print one line and a hint to stderr and exit with status 1 (2 for usage errors), never a
traceback.

One module per command group (:mod:`.demo`, :mod:`.chat`, :mod:`.contexts`,
:mod:`.checkpoints` with ``resume``, :mod:`.summarize`), each with a ``register(sub)`` that
adds its subcommands; :mod:`.render`, :mod:`.tables` and :mod:`.text` draw on the terminal;
:mod:`.errors` turns any exception into the two lines.
"""

from __future__ import annotations

from .app import main
from .common import DB_ENV, MODEL_ENV, REPLAY_ENV, CLIError, default_db

__all__ = ["DB_ENV", "MODEL_ENV", "REPLAY_ENV", "CLIError", "default_db", "main"]

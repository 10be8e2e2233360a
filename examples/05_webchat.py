"""05 — a small web chat: replies stream to the page as Markdown and are stored in SQLite.

    python examples/05_webchat.py            # then open http://127.0.0.1:8765
    python examples/05_webchat.py --port 0 --db /tmp/chat.db --delay 0.02
    # two workers over one database, a reply followed and stopped from either:
    python examples/05_webchat.py --port 8765 --db postgresql://app@db/chat --fanout redis://cache:6379/0
    python examples/05_webchat.py --port 8766 --db postgresql://app@db/chat --fanout redis://cache:6379/0
    # behind a load balancer: a page whose connection breaks goes on from any worker, and a
    # reply of a worker that died shows as interrupted on the others after --lease-ttl (5 s)

What to try: send a message and press **Stop** halfway: exactly the text you saw is kept as
the reply's checkpoint, and the page offers *Resume* (finish it in place), *Keep* (store it
as it is) or *Discard* (drop it for good). Reload the page while a reply streams: the reply
goes on, and the page picks it up where it is. Scroll up while it streams: the page stops
following until you come back down. Pick or create another conversation at the top. Each
reply shows its token usage (its cost too, once rxcontext reports prices).

Offline by default: the replies come from a bot behind the real ``openai`` SDK (no key, no
network). ``--model openai:gpt-4o-mini`` (with OPENAI_API_KEY) talks to a real model. The
server is the standard library's asyncio streams; the code is in ``examples/webchat/``.
"""

from __future__ import annotations

import sys

from webchat.app import main

if __name__ == "__main__":
    sys.exit(main())

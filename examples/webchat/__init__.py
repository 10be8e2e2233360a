"""The web chat of examples/05_webchat.py, as a small package.

- :mod:`.bot`     the offline bot: a keyless model behind the real ``openai`` SDK
- :mod:`.chat`    contexts and replies: send, watch, stop, resume, keep, discard
- :mod:`.server`  HTTP on asyncio streams: the page, a JSON API, server-sent events
- :mod:`.app`     the command line: options, start-up errors in one line, shutdown
- ``static/``     the page: ``index.html``, ``app.js``, ``markdown.js`` (a small Markdown
  renderer that builds DOM nodes and never parses HTML), ``app.css``
"""

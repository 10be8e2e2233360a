#!/usr/bin/env bash
# Peers benchmark: llm, litellm, LangChain and pydantic-ai streaming the same synthetic
# OpenAI Chat bytes as the bare openai SDK, measured in a separate virtual environment built
# here (python -m venv; pip install llm litellm langchain-openai 'pydantic-ai-slim[openai]')
# so their dependency pins never touch the project's. The ratios are against bare openai SDK
# iteration in that same venv. Prints them and writes JSON outside the tracked tree
# (default ${TMPDIR:-/tmp}/rxcontext-peers.json; OUT=path to change it).
#
#   bash benchmarks/peers/run_peers.sh            # builds $PEERS_VENV once, then measures
#   PEERS_VENV=/tmp/x EVENTS=3000 ROUNDS=15 bash benchmarks/peers/run_peers.sh
#   PEERS_PIP_ARGS='openai<3' bash benchmarks/peers/run_peers.sh   # extra pins for pip
# (A venv built earlier is reused; delete it, or set PEERS_VENV, after changing the pins.)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PY=${PYTHON:-python3}
VENV=${PEERS_VENV:-${TMPDIR:-/tmp}/rxcontext-peers-venv}
if [ ! -x "$VENV/bin/python" ] \
  || ! "$VENV/bin/python" -c "import llm, litellm, langchain_openai, pydantic_ai" 2>/dev/null; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q llm litellm langchain-openai 'pydantic-ai-slim[openai]' \
    ${PEERS_PIP_ARGS:-}
fi
"$VENV/bin/python" -m pip freeze 2>/dev/null \
  | grep -iE '^(openai|llm|litellm|langchain-openai|pydantic-ai-slim|httpx)==' >&2 || true
exec "$VENV/bin/python" "$here/peers.py" --out "${OUT:-${TMPDIR:-/tmp}/rxcontext-peers.json}" "$@"

"""Makes tests/data/rxcontext-0.1.0.db with rxcontext 0.1.0 (commit 0bbf9c7), for the m006
migration test. Run it with that release on the path; it is kept for the record, not run by
the tests:  git worktree add /tmp/old 0bbf9c7 && PYTHONPATH=/tmp/old python this_file.py OUT
"""

import sys

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, StreamInterrupted, Tool
from rxcontext.providers import ScriptedModel


def T(s):
    return Chunk(ChunkKind.TEXT, s)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop", response_id="resp_1")
store = rxcontext.open(sys.argv[1])
model = ScriptedModel(
    [
        [T("Paris."), DONE],
        [Chunk(ChunkKind.TOOL_CALL, '{"city":"Oslo"}', id="call_1", name="weather"), DONE],
        [T("Sunny in Oslo."), DONE],
        [T("The long answer "), ConnectionError("cut")],  # left open
        [T("Short "), ConnectionError("cut")],  # resumed below
        [T("answer."), DONE],
    ]
)
cw = ContextWindow(store, model, "old", retry=None)
cw.set_system_prompt("Be brief.")
cw.add_prompt("Capital of France?")
cw.call()
cw.add_tool(Tool("weather", "Weather").string("city", "City"), lambda a: "sunny")
cw.add_prompt("Weather in Oslo?")
cw.call()
cw.add_prompt("Tell me a long story.")
try:  # noqa: SIM105 (kept as it ran)
    cw.call()
except StreamInterrupted:
    pass
cw.add_prompt("Something short?")
try:
    cw.call()
except StreamInterrupted as e:
    resumed = e.checkpoint.id
cw.resume_call(resumed)
cw.add_prompt("Last question")
other = ContextWindow(store, None, "second")
other.add_prompt("hello from another context")
store.close()

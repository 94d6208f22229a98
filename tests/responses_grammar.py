"""The OpenAI Responses stream's grammar, as OpenAI sends it, checked on a list of decoded events.

Written from OpenAI's API reference (Responses → Streaming events: each event's fields) and a recorded
``o3`` stream (reasoning summary parts, then a message): ``sequence_number`` counts from 0;
``response.created`` and ``response.in_progress`` carry the in-progress response with an empty
``output``; then, per output item at ``output_index`` 0, 1, …::

    output_item.added
      message:       (content_part.added  output_text.delta*  output_text.done  content_part.done)*
      reasoning:     (reasoning_summary_part.added  reasoning_summary_text.delta*
                      reasoning_summary_text.done  reasoning_summary_part.done)*   summary_index 0, 1, …
      function_call: function_call_arguments.delta*  function_call_arguments.done
    output_item.done

and one terminal event, ``response.completed`` / ``response.incomplete`` (whose ``output`` is the done
items) or ``response.failed`` (which may cut an item short). The OpenAI Node SDK's accumulator indexes
``summary[summary_index]`` on a summary delta, which is why a missing ``reasoning_summary_part.added``
throws ``missing content at index 0`` there.
"""

from __future__ import annotations

from typing import Any

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class GrammarError(AssertionError):
    pass


def check(events: list[dict[str, Any]]) -> None:
    """Raises ``GrammarError`` naming the first event (by position and type) that breaks the grammar."""
    Checker(events).run()


class Checker:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.at = 0

    def fail(self, why: str) -> None:
        kinds = [e.get("type") for e in self.events]
        raise GrammarError(f"event {self.at} ({kinds[self.at] if self.at < len(kinds) else 'end'}): {why}\n"
                           f"stream: {kinds}")

    def peek(self) -> dict[str, Any]:
        if self.at >= len(self.events):
            self.fail("the stream ends without a terminal event")
        return self.events[self.at]

    def take(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = self.peek()
        if event.get("type") != kind:
            self.fail(f"expected {kind}")
        for name, value in fields.items():
            if event.get(name) != value:
                self.fail(f"{name} is {event.get(name)!r}, expected {value!r}")
        self.at += 1
        return event

    def run(self) -> None:
        numbers = [e.get("sequence_number") for e in self.events]
        if numbers != list(range(len(self.events))):
            raise GrammarError(f"sequence_number must count 0, 1, 2, …: {numbers}")
        created = self.take("response.created")["response"]
        progress = self.take("response.in_progress")["response"]
        for snapshot in (created, progress):
            if snapshot.get("status") != "in_progress" or snapshot.get("output") != []:
                self.fail("the opening snapshots are in_progress with an empty output")
        if created.get("id") != progress.get("id"):
            self.fail("the response id changed")
        done_items: list[dict[str, Any]] = []
        while self.peek().get("type") == "response.output_item.added":
            item = self.item(len(done_items))
            if item is None:  # cut short by response.failed
                break
            done_items.append(item)
        final = self.peek()
        if final.get("type") not in TERMINAL:
            self.fail(f"expected output_item.added or one of {TERMINAL}")
        self.at += 1
        if self.at != len(self.events):
            self.fail("events after the terminal event")
        response = final["response"]
        if response.get("id") != created.get("id"):
            self.fail("the response id changed")
        if final["type"] != "response.failed" and response.get("output") != done_items:
            self.fail("the final output is not the done items")

    def item(self, index: int) -> dict[str, Any] | None:
        added = self.take("response.output_item.added", output_index=index)["item"]
        kind, item_id = added.get("type"), added.get("id")
        if not item_id:
            self.fail("an added item has an id")
        body = {"message": self.message, "reasoning": self.reasoning, "function_call": self.call}.get(kind)
        if body is None:
            self.fail(f"unexpected item type {kind!r}")
        if body(index, item_id, added) is None:
            return None
        if self.peek().get("type") == "response.failed":
            return None
        done = self.take("response.output_item.done", output_index=index)["item"]
        if done.get("id") != item_id or done.get("type") != kind:
            self.fail("output_item.done names another item")
        return done

    def _cut(self) -> bool:
        return self.peek().get("type") == "response.failed"

    def message(self, index: int, item_id: str, added: dict[str, Any]) -> bool | None:
        if added.get("content") != [] or added.get("role") != "assistant":
            self.fail("a message is added with no content, role assistant")
        part_index = 0
        while self.peek().get("type") == "response.content_part.added":
            self.take("response.content_part.added", item_id=item_id, output_index=index, content_index=part_index)
            text = ""
            while self.peek().get("type") == "response.output_text.delta":
                text += self.take("response.output_text.delta", item_id=item_id, output_index=index,
                                  content_index=part_index)["delta"]
            if self._cut():
                return None
            self.take("response.output_text.done", item_id=item_id, output_index=index, content_index=part_index,
                      text=text)
            part = self.take("response.content_part.done", item_id=item_id, output_index=index,
                             content_index=part_index)["part"]
            if part.get("text") != text:
                self.fail("content_part.done carries the part's whole text")
            part_index += 1
        return True

    def reasoning(self, index: int, item_id: str, added: dict[str, Any]) -> bool | None:
        if added.get("summary") != []:
            self.fail("a reasoning item is added with an empty summary")
        summary_index = 0
        while self.peek().get("type") == "response.reasoning_summary_part.added":
            self.take("response.reasoning_summary_part.added", item_id=item_id, output_index=index,
                      summary_index=summary_index, part={"type": "summary_text", "text": ""})
            text = ""
            while self.peek().get("type") == "response.reasoning_summary_text.delta":
                text += self.take("response.reasoning_summary_text.delta", item_id=item_id, output_index=index,
                                  summary_index=summary_index)["delta"]
            if self._cut():
                return None
            self.take("response.reasoning_summary_text.done", item_id=item_id, output_index=index,
                      summary_index=summary_index, text=text)
            self.take("response.reasoning_summary_part.done", item_id=item_id, output_index=index,
                      summary_index=summary_index, part={"type": "summary_text", "text": text})
            summary_index += 1
        return True

    def call(self, index: int, item_id: str, added: dict[str, Any]) -> bool | None:
        if added.get("arguments") != "" or not added.get("call_id") or not added.get("name"):
            self.fail("a function_call is added with its call_id and name and empty arguments")
        arguments = ""
        while self.peek().get("type") == "response.function_call_arguments.delta":
            arguments += self.take("response.function_call_arguments.delta", item_id=item_id,
                                   output_index=index)["delta"]
        if self._cut():
            return None
        self.take("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments)
        return True

"""Steward's SQLite saver writes LangGraph's rows through Steward's writer: the rows must be the ones
LangGraph's own saver writes, committed as durably, and refused for an execution that lost its run."""

from __future__ import annotations

import operator
import sqlite3
from typing import Annotated, TypedDict

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, RetryPolicy, Send, interrupt

from runtime.checkpoint import EPOCH, open_checkpointer
from runtime.db import Database
from runtime.errors import ExecutionFenced


class State(TypedDict, total=False):
    items: list[int]
    done: Annotated[list[int], operator.add]
    answer: str


def build() -> StateGraph:
    """Fan-out with Send, a node that fails once and is retried, and an interrupt: every kind of write."""
    failed: set[int] = set()

    def work(state: dict) -> State:
        item = state["item"]
        if item == 2 and item not in failed:
            failed.add(item)
            raise RuntimeError("once")
        return {"done": [item * 10]}

    def ask(state: State) -> State:
        return {"answer": interrupt({"question": "go?", "done": sorted(state["done"])})}

    g = StateGraph(State)
    g.add_node("work", work, retry_policy=RetryPolicy(max_attempts=2, initial_interval=0, jitter=False,
                                                        retry_on=RuntimeError))
    g.add_node("ask", ask)
    g.add_conditional_edges(START, lambda s: [Send("work", {"item": i}) for i in s["items"]], ["work"])
    g.add_edge("work", "ask")
    g.add_edge("ask", END)
    return g


async def drive(saver, thread: str) -> dict:
    graph = build().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": thread}}
    first = await graph.ainvoke({"items": [1, 2, 3]}, config, durability="sync")
    assert "__interrupt__" in first
    last = await graph.ainvoke(Command(resume="yes"), config, durability="sync")
    history = [snapshot async for snapshot in graph.aget_state_history(config)]
    # interrupt ids, like checkpoint and task ids, are derived from time: compare what was asked
    return {"last": last, "history": [(s.values, s.next, [(t.name, [i.value for i in t.interrupts]) for t in s.tasks],
                                       s.metadata.get("step"), s.metadata.get("source")) for s in history]}


def rows(path: str) -> dict[str, list[tuple]]:
    """The saver's rows without the ids LangGraph derives from time (checkpoint ids, task ids)."""
    with sqlite3.connect(path) as conn:
        return {
            "checkpoints": conn.execute("SELECT thread_id, checkpoint_ns, type, parent_checkpoint_id IS NULL"
                                        " FROM checkpoints ORDER BY checkpoint_id").fetchall(),
            # an interrupt's value holds its id
            "writes": sorted(conn.execute("SELECT thread_id, checkpoint_ns, task_path, idx, channel, type,"
                                          " CASE channel WHEN '__interrupt__' THEN NULL ELSE value END"
                                          " FROM writes").fetchall()),
        }


async def test_the_rows_are_the_ones_langgraphs_own_saver_writes_and_it_reads_them_back(tmp_path) -> None:
    own_path, steward_path = str(tmp_path / "own.db"), str(tmp_path / "steward.db")
    async with AsyncSqliteSaver.from_conn_string(own_path) as own:
        expected = await drive(own, "t")
    db = Database(f"sqlite:///{steward_path}")
    db.upgrade()
    try:
        async with open_checkpointer(db) as saver:
            got = await drive(saver, "t")
    finally:
        await db.dispose()
    assert got == expected
    assert got["last"]["answer"] == "yes" and sorted(got["last"]["done"]) == [10, 20, 30]
    assert rows(steward_path) == rows(own_path)
    # LangGraph's own saver reads what Steward wrote
    async with AsyncSqliteSaver.from_conn_string(steward_path) as own:
        graph = build().compile(checkpointer=own)
        state = await graph.aget_state({"configurable": {"thread_id": "t"}})
    assert state.values["answer"] == "yes" and state.next == ()


async def test_the_saver_commits_to_disk_as_langgraphs_does_and_steward_writes_go_back_to_normal(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path}/s.db")
    db.upgrade()

    def synchronous(cursor) -> int:
        return cursor.execute("PRAGMA synchronous").fetchone()[0]

    try:
        assert await db.run_cursor(synchronous, synced=True) == 2  # FULL
        assert await db.run_cursor(synchronous) == 1  # NORMAL
        with pytest.raises(ZeroDivisionError):
            await db.run_cursor(lambda cursor: 1 / 0, synced=True)
        assert await db.run_cursor(synchronous) == 1
    finally:
        await db.dispose()


async def test_a_write_of_an_execution_that_does_not_own_the_run_is_refused_and_nothing_lands(tmp_path) -> None:
    """No registered execution: the saver checks the run's row in the writing transaction itself."""
    path = tmp_path / "s.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    try:
        async with open_checkpointer(db) as saver:
            graph = build().compile(checkpointer=saver)
            config = {"configurable": {"thread_id": "no-such-run", EPOCH: 1}}
            with pytest.raises(ExecutionFenced):
                await graph.ainvoke({"items": [1]}, config, durability="sync")
    finally:
        await db.dispose()
    assert rows(str(path)) == {"checkpoints": [], "writes": []}


async def test_start_up_refuses_langgraph_tables_of_another_shape(tmp_path, monkeypatch) -> None:
    """Steward writes LangGraph's rows itself: a LangGraph release that laid its tables out otherwise is
    refused at start-up, naming the column, instead of failing the first checkpoint of a run."""
    from runtime import checkpoint
    from runtime.errors import WorkflowDefinitionError

    monkeypatch.setitem(checkpoint._SQLITE_COLUMNS, "writes", {*checkpoint._SQLITE_COLUMNS["writes"], "task_kind"})
    db = Database(f"sqlite:///{tmp_path}/s.db")
    db.upgrade()
    try:
        with pytest.raises(WorkflowDefinitionError, match="'writes' lacks column.*task_kind"):
            async with open_checkpointer(db):
                pass
    finally:
        await db.dispose()

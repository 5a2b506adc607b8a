"""The session store without a viewer: opened once, shared with the methods that require it,
prepared when the parameters ask, the latest request served, dropped with its video."""

from dataclasses import dataclass

import numpy as np
import pytest

from napari_vosembed.methods import Method, Progress, Session, available_methods, base
from napari_vosembed.sessions import SessionStore


class Handle:
    """What the store's `start` returns: a job that runs now or when `finish` is called."""

    def __init__(self, work, on_result, on_done):
        self.gen, self.on_result, self.on_done = work(), on_result, on_done
        self.running, self.cancelled, self.failed = True, False, False

    def finish(self):
        try:
            while True:
                next(self.gen)
        except StopIteration as stop:
            self.running = False
            self.on_result(stop.value)
        self.on_done(self)

    def cancel(self):
        self.running, self.cancelled = False, True
        self.on_done(self)


class Runner:
    """The store's `start`: runs each job at once, or keeps it for later with `deferred`."""

    def __init__(self, deferred=False):
        self.deferred, self.jobs = deferred, []

    def __call__(self, work, desc, on_result, on_done, keep):
        handle = Handle(work, on_result, on_done)
        keep(handle)
        self.jobs.append((desc, handle))
        if not self.deferred:
            handle.finish()
        return handle


opened: list = []


class Base(Method):
    name = "base-test"
    interactive = True
    session_params = ("kind",)

    @dataclass
    class Params:
        kind: str = "a"
        graph: bool = False

    def create_session(self, video, shared, settings):
        opened.append((self.name, self.params.kind))
        yield Progress(1, 1, "opening")
        return BaseSession(self, video)


class BaseSession(Session):
    prepared = False

    def needs_preparing(self, prompts=None):
        return self.params.graph and not self.prepared

    def prepare(self, prompts=None):
        if self.needs_preparing():
            yield Progress(1, 1, "graph")
            self.prepared = True


class OnTop(Method):
    name = "on-top-test"
    requires = ("base-test",)

    @dataclass
    class Params:
        level: int = 1

    def create_session(self, video, shared, settings):
        opened.append((self.name, self.params.level))
        yield Progress(1, 1, "opening")
        session = Session(self, video)
        session.below = shared["base-test"]
        return session


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    available_methods()
    monkeypatch.setattr(base.METHODS, "items", {"base-test": Base, "on-top-test": OnTop})
    opened.clear()


VIDEO = np.zeros((3, 8, 8), np.uint8)


def ask(store, method, key="video"):
    got = []
    store.session(key, VIDEO, method, got.append)
    return got


def test_a_session_is_opened_once_and_shared_with_the_method_that_requires_it():
    store = SessionStore(Runner())
    first = ask(store, Base(device="cpu"))
    assert len(first) == 1 and opened == [("base-test", "a")]
    assert ask(store, Base(device="cpu")) == first  # kept: not opened again
    top = ask(store, OnTop(device="cpu"))
    assert top[0].below is first[0] and opened == [("base-test", "a"), ("on-top-test", 1)]
    # a parameter the session does not depend on: the same session, answering with the new value
    again = ask(store, Base(device="cpu", graph=False))
    assert again == first


def test_other_session_parameters_open_another_session_in_place_of_the_first():
    store = SessionStore(Runner())
    a = ask(store, Base(device="cpu"))[0]
    b = ask(store, Base(device="cpu", kind="b"))[0]
    assert a is not b and opened == [("base-test", "a"), ("base-test", "b")]
    assert store.get("video", Base(device="cpu")) is None  # one session per method and video
    assert store.get("video", Base(device="cpu", kind="b")) is b


def test_a_session_is_prepared_in_a_job_when_its_parameters_ask():
    runner = Runner()
    store = SessionStore(runner)
    session = ask(store, Base(device="cpu"))[0]
    assert [desc for desc, _ in runner.jobs] == ["opening base-test (the video's embeddings are computed once, "
                                                 "then cached on disk)"]
    assert ask(store, Base(device="cpu", graph=True)) == [session] and session.prepared
    assert runner.jobs[-1][0] == "preparing base-test" and len(opened) == 1


def test_while_a_session_opens_the_latest_request_is_served():
    runner = Runner(deferred=True)
    store = SessionStore(runner)
    first, second = [], []
    store.session("video", VIDEO, Base(device="cpu"), first.append)
    assert store.busy
    store.session("video", VIDEO, Base(device="cpu"), second.append)
    assert len(runner.jobs) == 1  # one job for both requests
    runner.jobs[0][1].finish()
    assert first == [] and len(second) == 1 and not store.busy


def test_dropping_a_video_cancels_its_job_and_forgets_its_sessions():
    runner = Runner(deferred=True)
    store = SessionStore(runner)
    ask(store, Base(device="cpu"), key="one")
    ask(store, Base(device="cpu"), key="two")
    runner.jobs[1][1].finish()
    store.drop(keep="two")
    assert runner.jobs[0][1].cancelled and store.get("two", Base(device="cpu")) is not None
    store.drop("two")
    assert store.get("two", Base(device="cpu")) is None and not store.busy

"""Stream processing on raystream topics (Kafka Streams' model, run as Ray actors, columnar where it can be).

    import raystream as rs
    from raystream.streams import App, TumblingWindows

    app = App("page-views")
    views = app.stream("views", value_serde="json")
    views.group_by(lambda v: v["page"]).windowed_by(TumblingWindows(60_000)).count(name="views-per-minute") \\
         .to_stream().to("views-per-minute")
    app.run(num_workers=2)

Modules: :mod:`~raystream.streams.app` (App), :mod:`~raystream.streams.dsl` (Stream, GroupedStream,
Table), :mod:`~raystream.streams.topology` (the graph), :mod:`~raystream.streams.task` and
:mod:`~raystream.streams.worker` (execution), :mod:`~raystream.streams.state` (state stores),
:mod:`~raystream.streams.serde`, and the windows of :mod:`raystream.core.windows`.
"""

from raystream.core.windows import HoppingWindows, SessionWindows, TumblingWindows
from raystream.streams.app import App
from raystream.streams.dsl import GroupedStream, JoinWindows, Stream, Table
from raystream.streams.processors import StreamsError
from raystream.streams.serde import Serde
from raystream.streams.topology import TopologyError

__all__ = ["App", "GroupedStream", "HoppingWindows", "JoinWindows", "Serde", "SessionWindows", "Stream",
           "StreamsError", "Table", "TopologyError", "TumblingWindows"]

"""Which windows carry evidence: what an overloaded collector never pushes back.

``carries_evidence(w)`` is true for a window with damage counts (files whose
type was destroyed, files turned into encoded random text, encrypted twins),
a canary touched, the agent's tripwire fired, or a writer with destroyed files
(a new writer tree among them). Both sides decide alike: the collector judges
such a window ahead of quiet ones and admits it however far behind it is; an
agent pushed back (RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms``) comes
back before the pushback ends as soon as it spools one.
"""

from __future__ import annotations

from tocsin.v1 import telemetry_pb2 as pb


def carries_evidence(w: pb.Window) -> bool:
    return bool(
        w.files_type_destroyed
        or w.files_encoded_random
        or w.encrypted_twins
        or w.canary_touches
        or w.tripwire_fired
        or any(p.files_type_destroyed for p in w.top_writers)
    )

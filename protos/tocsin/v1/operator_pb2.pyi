import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListHostsRequest(_message.Message):
    __slots__ = ("limit", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("host_id", "hostname", "connected", "last_seen", "windows", "isolated", "suspended_pids", "agent_version", "open_alerts", "suspended_pids_dropped")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_PIDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPEN_ALERTS_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_PIDS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    hostname: str
    connected: bool
    last_seen: _timestamp_pb2.Timestamp
    windows: int
    isolated: bool
    suspended_pids: _containers.RepeatedScalarFieldContainer[int]
    agent_version: str
    open_alerts: int
    suspended_pids_dropped: int
    def __init__(self, host_id: _Optional[str] = ..., hostname: _Optional[str] = ..., connected: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., windows: _Optional[int] = ..., isolated: _Optional[bool] = ..., suspended_pids: _Optional[_Iterable[int]] = ..., agent_version: _Optional[str] = ..., open_alerts: _Optional[int] = ..., suspended_pids_dropped: _Optional[int] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "next_page_token")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[HostInfo]
    next_page_token: str
    def __init__(self, hosts: _Optional[_Iterable[_Union[HostInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("host_id", "limit", "page_token")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    limit: int
    page_token: str
    def __init__(self, host_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AlertInfo(_message.Message):
    __slots__ = ("alert_id", "host_id", "severity", "score", "detected_at", "reasons", "process", "summary", "json")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    host_id: str
    severity: str
    score: float
    detected_at: _timestamp_pb2.Timestamp
    reasons: _containers.RepeatedScalarFieldContainer[str]
    process: str
    summary: str
    json: str
    def __init__(self, alert_id: _Optional[str] = ..., host_id: _Optional[str] = ..., severity: _Optional[str] = ..., score: _Optional[float] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reasons: _Optional[_Iterable[str]] = ..., process: _Optional[str] = ..., summary: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_page_token")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[AlertInfo]
    next_page_token: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[AlertInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class HostActionRequest(_message.Message):
    __slots__ = ("host_id", "processes", "operator", "timeout_s")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    processes: str
    operator: str
    timeout_s: float
    def __init__(self, host_id: _Optional[str] = ..., processes: _Optional[str] = ..., operator: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class HostActionResponse(_message.Message):
    __slots__ = ("status", "detail", "still_suspended")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    STILL_SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    status: str
    detail: str
    still_suspended: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, status: _Optional[str] = ..., detail: _Optional[str] = ..., still_suspended: _Optional[_Iterable[int]] = ...) -> None: ...

class ListActionsRequest(_message.Message):
    __slots__ = ("host_id", "limit", "page_token")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    limit: int
    page_token: str
    def __init__(self, host_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ActionInfo(_message.Message):
    __slots__ = ("action_id", "alert_id", "host_id", "kind", "requested_by", "requested_at", "status", "detail", "pids", "finished_at")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    action_id: str
    alert_id: str
    host_id: str
    kind: str
    requested_by: str
    requested_at: _timestamp_pb2.Timestamp
    status: str
    detail: str
    pids: _containers.RepeatedScalarFieldContainer[int]
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, action_id: _Optional[str] = ..., alert_id: _Optional[str] = ..., host_id: _Optional[str] = ..., kind: _Optional[str] = ..., requested_by: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ..., pids: _Optional[_Iterable[int]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListActionsResponse(_message.Message):
    __slots__ = ("actions", "next_page_token")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[ActionInfo]
    next_page_token: str
    def __init__(self, actions: _Optional[_Iterable[_Union[ActionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ConsoleLinkRequest(_message.Message):
    __slots__ = ("operator",)
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    operator: str
    def __init__(self, operator: _Optional[str] = ...) -> None: ...

class ConsoleLinkResponse(_message.Message):
    __slots__ = ("url", "valid_s")
    URL_FIELD_NUMBER: _ClassVar[int]
    VALID_S_FIELD_NUMBER: _ClassVar[int]
    url: str
    valid_s: int
    def __init__(self, url: _Optional[str] = ..., valid_s: _Optional[int] = ...) -> None: ...

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Attribution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTRIBUTION_UNSPECIFIED: _ClassVar[Attribution]
    ATTRIBUTION_FANOTIFY: _ClassVar[Attribution]
    ATTRIBUTION_PSUTIL_IO: _ClassVar[Attribution]
ATTRIBUTION_UNSPECIFIED: Attribution
ATTRIBUTION_FANOTIFY: Attribution
ATTRIBUTION_PSUTIL_IO: Attribution

class AlarmRequest(_message.Message):
    __slots__ = ("hello", "window")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    window: Window
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., window: _Optional[_Union[Window, _Mapping]] = ...) -> None: ...

class AlarmReply(_message.Message):
    __slots__ = ("judged",)
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    judged: bool
    def __init__(self, judged: _Optional[bool] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "window", "action_result", "heartbeat", "goodbye")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_RESULT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    window: Window
    action_result: ActionResult
    heartbeat: Heartbeat
    goodbye: Goodbye
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., action_result: _Optional[_Union[ActionResult, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("host_id", "boot_id", "agent_version", "watched_roots", "capabilities", "hostname", "tripwire_mode")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    WATCHED_ROOTS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    TRIPWIRE_MODE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    boot_id: str
    agent_version: str
    watched_roots: _containers.RepeatedScalarFieldContainer[str]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    hostname: str
    tripwire_mode: str
    def __init__(self, host_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., watched_roots: _Optional[_Iterable[str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., hostname: _Optional[str] = ..., tripwire_mode: _Optional[str] = ...) -> None: ...

class ProcessSample(_message.Message):
    __slots__ = ("pid", "ppid", "name", "exe", "user", "bytes_written", "bytes_read", "files_touched", "children", "tree_root_pid", "cmdline", "files_type_destroyed", "create_time", "attribution", "start_ticks", "tree_root_start_ticks", "kernel_boot_id", "smb_client_addr", "smb_user")
    PID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    FILES_TOUCHED_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    TREE_ROOT_PID_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    FILES_TYPE_DESTROYED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    START_TICKS_FIELD_NUMBER: _ClassVar[int]
    TREE_ROOT_START_TICKS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SMB_CLIENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    SMB_USER_FIELD_NUMBER: _ClassVar[int]
    pid: int
    ppid: int
    name: str
    exe: str
    user: str
    bytes_written: int
    bytes_read: int
    files_touched: int
    children: int
    tree_root_pid: int
    cmdline: str
    files_type_destroyed: int
    create_time: float
    attribution: Attribution
    start_ticks: int
    tree_root_start_ticks: int
    kernel_boot_id: str
    smb_client_addr: str
    smb_user: str
    def __init__(self, pid: _Optional[int] = ..., ppid: _Optional[int] = ..., name: _Optional[str] = ..., exe: _Optional[str] = ..., user: _Optional[str] = ..., bytes_written: _Optional[int] = ..., bytes_read: _Optional[int] = ..., files_touched: _Optional[int] = ..., children: _Optional[int] = ..., tree_root_pid: _Optional[int] = ..., cmdline: _Optional[str] = ..., files_type_destroyed: _Optional[int] = ..., create_time: _Optional[float] = ..., attribution: _Optional[_Union[Attribution, str]] = ..., start_ticks: _Optional[int] = ..., tree_root_start_ticks: _Optional[int] = ..., kernel_boot_id: _Optional[str] = ..., smb_client_addr: _Optional[str] = ..., smb_user: _Optional[str] = ...) -> None: ...

class ProcessRef(_message.Message):
    __slots__ = ("pid", "start_ticks", "kernel_boot_id")
    PID_FIELD_NUMBER: _ClassVar[int]
    START_TICKS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    start_ticks: int
    kernel_boot_id: str
    def __init__(self, pid: _Optional[int] = ..., start_ticks: _Optional[int] = ..., kernel_boot_id: _Optional[str] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("seq", "start", "end", "events_created", "events_modified", "events_deleted", "events_moved", "files_created", "files_modified", "files_deleted", "files_renamed", "dirs_touched", "extensions_touched", "new_extensions", "top_new_extension", "top_new_extension_dirs", "files_probed", "bytes_probed", "files_high_entropy", "files_type_destroyed", "mean_entropy", "files_incompressible", "repeated_name", "repeated_name_dirs", "encrypted_twins", "canary_touches", "bytes_read", "bytes_written", "net_bytes_out", "events_dropped", "queue_overflows", "spool_dropped", "top_writers", "example_paths", "files_encoded_random", "tripwire_fired", "tripwire_reason", "files_read", "drill", "read_dirs", "archives_created", "watch_limit_hits", "files_unprobed", "ahead")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CREATED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_MOVED_FIELD_NUMBER: _ClassVar[int]
    FILES_CREATED_FIELD_NUMBER: _ClassVar[int]
    FILES_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    FILES_DELETED_FIELD_NUMBER: _ClassVar[int]
    FILES_RENAMED_FIELD_NUMBER: _ClassVar[int]
    DIRS_TOUCHED_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_TOUCHED_FIELD_NUMBER: _ClassVar[int]
    NEW_EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_NEW_EXTENSION_FIELD_NUMBER: _ClassVar[int]
    TOP_NEW_EXTENSION_DIRS_FIELD_NUMBER: _ClassVar[int]
    FILES_PROBED_FIELD_NUMBER: _ClassVar[int]
    BYTES_PROBED_FIELD_NUMBER: _ClassVar[int]
    FILES_HIGH_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    FILES_TYPE_DESTROYED_FIELD_NUMBER: _ClassVar[int]
    MEAN_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    FILES_INCOMPRESSIBLE_FIELD_NUMBER: _ClassVar[int]
    REPEATED_NAME_FIELD_NUMBER: _ClassVar[int]
    REPEATED_NAME_DIRS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_TWINS_FIELD_NUMBER: _ClassVar[int]
    CANARY_TOUCHES_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    NET_BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_OVERFLOWS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    TOP_WRITERS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_PATHS_FIELD_NUMBER: _ClassVar[int]
    FILES_ENCODED_RANDOM_FIELD_NUMBER: _ClassVar[int]
    TRIPWIRE_FIRED_FIELD_NUMBER: _ClassVar[int]
    TRIPWIRE_REASON_FIELD_NUMBER: _ClassVar[int]
    FILES_READ_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    READ_DIRS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVES_CREATED_FIELD_NUMBER: _ClassVar[int]
    WATCH_LIMIT_HITS_FIELD_NUMBER: _ClassVar[int]
    FILES_UNPROBED_FIELD_NUMBER: _ClassVar[int]
    AHEAD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    events_created: int
    events_modified: int
    events_deleted: int
    events_moved: int
    files_created: int
    files_modified: int
    files_deleted: int
    files_renamed: int
    dirs_touched: int
    extensions_touched: int
    new_extensions: int
    top_new_extension: str
    top_new_extension_dirs: int
    files_probed: int
    bytes_probed: int
    files_high_entropy: int
    files_type_destroyed: int
    mean_entropy: float
    files_incompressible: int
    repeated_name: str
    repeated_name_dirs: int
    encrypted_twins: int
    canary_touches: int
    bytes_read: int
    bytes_written: int
    net_bytes_out: int
    events_dropped: int
    queue_overflows: int
    spool_dropped: int
    top_writers: _containers.RepeatedCompositeFieldContainer[ProcessSample]
    example_paths: _containers.RepeatedScalarFieldContainer[str]
    files_encoded_random: int
    tripwire_fired: bool
    tripwire_reason: str
    files_read: int
    drill: bool
    read_dirs: int
    archives_created: int
    watch_limit_hits: int
    files_unprobed: int
    ahead: bool
    def __init__(self, seq: _Optional[int] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., events_created: _Optional[int] = ..., events_modified: _Optional[int] = ..., events_deleted: _Optional[int] = ..., events_moved: _Optional[int] = ..., files_created: _Optional[int] = ..., files_modified: _Optional[int] = ..., files_deleted: _Optional[int] = ..., files_renamed: _Optional[int] = ..., dirs_touched: _Optional[int] = ..., extensions_touched: _Optional[int] = ..., new_extensions: _Optional[int] = ..., top_new_extension: _Optional[str] = ..., top_new_extension_dirs: _Optional[int] = ..., files_probed: _Optional[int] = ..., bytes_probed: _Optional[int] = ..., files_high_entropy: _Optional[int] = ..., files_type_destroyed: _Optional[int] = ..., mean_entropy: _Optional[float] = ..., files_incompressible: _Optional[int] = ..., repeated_name: _Optional[str] = ..., repeated_name_dirs: _Optional[int] = ..., encrypted_twins: _Optional[int] = ..., canary_touches: _Optional[int] = ..., bytes_read: _Optional[int] = ..., bytes_written: _Optional[int] = ..., net_bytes_out: _Optional[int] = ..., events_dropped: _Optional[int] = ..., queue_overflows: _Optional[int] = ..., spool_dropped: _Optional[int] = ..., top_writers: _Optional[_Iterable[_Union[ProcessSample, _Mapping]]] = ..., example_paths: _Optional[_Iterable[str]] = ..., files_encoded_random: _Optional[int] = ..., tripwire_fired: _Optional[bool] = ..., tripwire_reason: _Optional[str] = ..., files_read: _Optional[int] = ..., drill: _Optional[bool] = ..., read_dirs: _Optional[int] = ..., archives_created: _Optional[int] = ..., watch_limit_hits: _Optional[int] = ..., files_unprobed: _Optional[int] = ..., ahead: _Optional[bool] = ...) -> None: ...

class ActionResult(_message.Message):
    __slots__ = ("command_id", "kind", "status", "detail", "pids", "at", "local")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    kind: str
    status: str
    detail: str
    pids: _containers.RepeatedScalarFieldContainer[int]
    at: _timestamp_pb2.Timestamp
    local: bool
    def __init__(self, command_id: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ..., pids: _Optional[_Iterable[int]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., local: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("at", "spool_depth", "spool_dropped")
    AT_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    spool_depth: int
    spool_dropped: int
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spool_depth: _Optional[int] = ..., spool_dropped: _Optional[int] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("ack", "command", "config", "pause")
    ACK_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    command: Command
    config: ConfigUpdate
    pause: Pause
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., config: _Optional[_Union[ConfigUpdate, _Mapping]] = ..., pause: _Optional[_Union[Pause, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("boot_id", "seq")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    seq: int
    def __init__(self, boot_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("id", "kind", "pids", "parameters", "deadline", "dry_run", "processes")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    pids: _containers.RepeatedScalarFieldContainer[int]
    parameters: _containers.ScalarMap[str, str]
    deadline: _timestamp_pb2.Timestamp
    dry_run: bool
    processes: _containers.RepeatedCompositeFieldContainer[ProcessRef]
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., pids: _Optional[_Iterable[int]] = ..., parameters: _Optional[_Mapping[str, str]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dry_run: _Optional[bool] = ..., processes: _Optional[_Iterable[_Union[ProcessRef, _Mapping]]] = ...) -> None: ...

class Pause(_message.Message):
    __slots__ = ("quiet_ms",)
    QUIET_MS_FIELD_NUMBER: _ClassVar[int]
    quiet_ms: int
    def __init__(self, quiet_ms: _Optional[int] = ...) -> None: ...

class ConfigUpdate(_message.Message):
    __slots__ = ("tripwire_mode",)
    TRIPWIRE_MODE_FIELD_NUMBER: _ClassVar[int]
    tripwire_mode: str
    def __init__(self, tripwire_mode: _Optional[str] = ...) -> None: ...

//! Protocol constants shared by every side of the wire: metadata names, and the one table of
//! limits on what crosses it ([`TABLE`]). The scheduler, the worker and the clients use
//! these and never their own copies; the README's table of limits is [`markdown_table`]'s
//! output, and a test keeps the two the same.

/// Metadata on a refusal by a replica that does not lead: the leader's address, when known.
pub const LEADER_METADATA: &str = "baton-leader";

/// Metadata on a refusal by a replica that does not lead, whether or not it knows the
/// leader: the call was not acted on, so any call (even one that is not idempotent) may be
/// retried elsewhere.
pub const REFUSED_METADATA: &str = "baton-refused";

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The largest gRPC message any baton service or client accepts (each side bounds what it
/// receives; a server refuses a larger request with a clear status). A run's parameters, a
/// flow, a page of task runs and an assignment's inputs all fit in it.
pub const MAX_MESSAGE_BYTES: usize = 16 * MIB;
/// Projects, flow, task, tag and parameter names, and worker ids and labels.
pub const MAX_NAME_BYTES: usize = 256;
/// The longest run id taken (the scheduler makes 16-character ids).
pub const MAX_RUN_ID_BYTES: usize = 64;
/// A run's idempotency key.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 512;
/// How many parameters a run may be given.
pub const MAX_PARAMETERS: usize = 1_000;
/// All of a run's parameter names and values together (JSON text). With the run's other
/// fields it stays well inside one state-store transaction (etcd takes 1.5 MiB).
pub const MAX_PARAMETERS_BYTES: usize = MIB;
/// A flow definition's text.
pub const MAX_FLOW_SOURCE_BYTES: usize = MIB;
/// The deepest nesting of lists and maps in a flow definition (a real flow needs about 6).
pub const MAX_FLOW_NESTING: usize = 64;
/// A result location (`file://…` or `s3://…`).
pub const MAX_LOCATION_BYTES: usize = 4 * KIB;
/// A result's checksum or content type, as a worker reports it.
pub const MAX_RESULT_META_BYTES: usize = 256;
/// A task's result (its JSON text).
pub const MAX_RESULT_BYTES: usize = 16 * MIB;
/// A result a worker may send inside its report; larger ones are read from the store.
pub const MAX_INLINE_RESULT_BYTES: usize = 64 * KIB;
/// A task's error message as stored; a longer one is cut.
pub const MAX_ERROR_BYTES: usize = 16 * KIB;
/// One log line; a longer one is cut.
pub const MAX_LOG_LINE_BYTES: usize = 16 * KIB;
/// Log lines of one attempt held in memory before the oldest are dropped.
pub const MAX_LOG_LINES_HELD: usize = 10_000;
/// Log bytes of one attempt held in memory before the oldest are dropped.
pub const MAX_LOG_BYTES_HELD: usize = 4 * MIB;
/// Log bytes of one attempt stored in all; later lines are not stored (a marker says so).
pub const MAX_LOG_BYTES_STORED: u64 = 256 << 20;
/// Log bytes a second one worker session may send, sustained (bursts to twice this).
pub const LOG_BYTES_PER_SEC: usize = 8 * MIB;
/// Successors a worker is offered to run ahead with one assignment, and reports with one
/// result; further ones are dropped (they run as ordinary assignments).
pub const MAX_RUN_AHEAD: usize = 256;
/// The successors offered with one assignment, their specs and inputs together.
pub const MAX_RUN_AHEAD_HINT_BYTES: usize = 64 * KIB;
/// Labels one worker may register.
pub const MAX_WORKER_LABELS: usize = 64;
/// Most task runs in one `ListTaskRuns` answer.
pub const MAX_TASK_RUNS_PAGE: usize = 10_000;
/// Most runs in one `ListRuns` answer.
pub const MAX_RUNS_PAGE: usize = 1_000;
/// Most states one `ListTaskRuns` filter names.
pub const MAX_STATES_ASKED: usize = 16;
/// Default client calls in flight per caller (`--client-concurrency`).
pub const DEFAULT_CLIENT_CONCURRENCY: u32 = 512;
/// Default client calls in flight per connection (`--connection-concurrency`).
pub const DEFAULT_CONNECTION_CONCURRENCY: u32 = 256;
/// Default client calls in flight from all clients (`--client-total-concurrency`).
pub const DEFAULT_CLIENT_TOTAL_CONCURRENCY: u32 = 4096;
/// Default client calls a second per caller (`--client-rate`; bursts to twice this).
pub const DEFAULT_CLIENT_RATE: u32 = 2000;

/// How a limit's value is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Count,
    BytesPerSecond,
    CallsPerSecond,
}

/// One row of the table of limits.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    /// What is bounded.
    pub what: &'static str,
    pub value: u64,
    pub unit: Unit,
    /// What happens over it.
    pub over: &'static str,
}

const INVALID: &str = "INVALID_ARGUMENT naming the field";

/// Every limit on what reaches a scheduler, in one place.
pub const TABLE: &[Limit] = &[
    Limit {
        what: "a gRPC message, either way",
        value: MAX_MESSAGE_BYTES as u64,
        unit: Unit::Bytes,
        over: "OUT_OF_RANGE",
    },
    Limit {
        what: "a project, flow, task, tag or parameter name; a worker id or label",
        value: MAX_NAME_BYTES as u64,
        unit: Unit::Bytes,
        over: INVALID,
    },
    Limit {
        what: "a run id (letters, digits, `-`, `_`)",
        value: MAX_RUN_ID_BYTES as u64,
        unit: Unit::Bytes,
        over: INVALID,
    },
    Limit {
        what: "an idempotency key",
        value: MAX_IDEMPOTENCY_KEY_BYTES as u64,
        unit: Unit::Bytes,
        over: INVALID,
    },
    Limit {
        what: "parameters of a run",
        value: MAX_PARAMETERS as u64,
        unit: Unit::Count,
        over: INVALID,
    },
    Limit {
        what: "parameter names and values of a run, together",
        value: MAX_PARAMETERS_BYTES as u64,
        unit: Unit::Bytes,
        over: INVALID,
    },
    Limit {
        what: "a flow definition",
        value: MAX_FLOW_SOURCE_BYTES as u64,
        unit: Unit::Bytes,
        over: INVALID,
    },
    Limit {
        what: "nesting of lists and maps in a flow definition",
        value: MAX_FLOW_NESTING as u64,
        unit: Unit::Count,
        over: "INVALID_ARGUMENT, before parsing",
    },
    Limit {
        what: "a result location",
        value: MAX_LOCATION_BYTES as u64,
        unit: Unit::Bytes,
        over: "INVALID_ARGUMENT; from a worker, the attempt fails",
    },
    Limit {
        what: "a task's result",
        value: MAX_RESULT_BYTES as u64,
        unit: Unit::Bytes,
        over: "the attempt fails, naming the limit",
    },
    Limit {
        what: "a result sent inside a worker's report",
        value: MAX_INLINE_RESULT_BYTES as u64,
        unit: Unit::Bytes,
        over: "read from the result store instead",
    },
    Limit {
        what: "a task's error message",
        value: MAX_ERROR_BYTES as u64,
        unit: Unit::Bytes,
        over: "cut, with a marker",
    },
    Limit {
        what: "a log line",
        value: MAX_LOG_LINE_BYTES as u64,
        unit: Unit::Bytes,
        over: "cut",
    },
    Limit {
        what: "log lines of an attempt held in memory",
        value: MAX_LOG_LINES_HELD as u64,
        unit: Unit::Count,
        over: "the oldest dropped, with a marker",
    },
    Limit {
        what: "log bytes of an attempt held in memory",
        value: MAX_LOG_BYTES_HELD as u64,
        unit: Unit::Bytes,
        over: "the oldest dropped, with a marker",
    },
    Limit {
        what: "log bytes of an attempt stored",
        value: MAX_LOG_BYTES_STORED,
        unit: Unit::Bytes,
        over: "later lines not stored, with a marker",
    },
    Limit {
        what: "log bytes from one worker session (bursts to twice this)",
        value: LOG_BYTES_PER_SEC as u64,
        unit: Unit::BytesPerSecond,
        over: "lines dropped and counted in the scheduler's log",
    },
    Limit {
        what: "labels of a worker",
        value: MAX_WORKER_LABELS as u64,
        unit: Unit::Count,
        over: INVALID,
    },
    Limit {
        what: "task runs in one `ListTaskRuns` page",
        value: MAX_TASK_RUNS_PAGE as u64,
        unit: Unit::Count,
        over: "the page is cut (ask with `offset`)",
    },
    Limit {
        what: "states in one `ListTaskRuns` filter",
        value: MAX_STATES_ASKED as u64,
        unit: Unit::Count,
        over: INVALID,
    },
    Limit {
        what: "runs in one `ListRuns` answer",
        value: MAX_RUNS_PAGE as u64,
        unit: Unit::Count,
        over: "the newest only",
    },
    Limit {
        what: "client calls in flight per caller (`--client-concurrency`)",
        value: DEFAULT_CLIENT_CONCURRENCY as u64,
        unit: Unit::Count,
        over: "RESOURCE_EXHAUSTED naming the flag",
    },
    Limit {
        what: "client calls in flight per connection (`--connection-concurrency`)",
        value: DEFAULT_CONNECTION_CONCURRENCY as u64,
        unit: Unit::Count,
        over: "RESOURCE_EXHAUSTED naming the flag",
    },
    Limit {
        what: "client calls in flight in all (`--client-total-concurrency`)",
        value: DEFAULT_CLIENT_TOTAL_CONCURRENCY as u64,
        unit: Unit::Count,
        over: "RESOURCE_EXHAUSTED naming the flag",
    },
    Limit {
        what: "client calls per caller (`--client-rate`, bursts to twice this)",
        value: DEFAULT_CLIENT_RATE as u64,
        unit: Unit::CallsPerSecond,
        over: "RESOURCE_EXHAUSTED naming the flag",
    },
    Limit {
        what: "successors a worker reports run ahead with one result",
        value: MAX_RUN_AHEAD as u64,
        unit: Unit::Count,
        over: "the rest are dropped and dispatched as usual",
    },
];

/// `value` in `unit`, as people read it: `16 MiB`, `1,000`, `8 MiB/s`.
pub fn human(value: u64, unit: Unit) -> String {
    let bytes = |v: u64| {
        for (size, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if v >= size && v.is_multiple_of(size) {
                return format!("{} {name}", v / size);
            }
        }
        format!("{v} B")
    };
    match unit {
        Unit::Bytes => bytes(value),
        Unit::BytesPerSecond => format!("{}/s", bytes(value)),
        Unit::Count => grouped(value),
        Unit::CallsPerSecond => format!("{}/s", grouped(value)),
    }
}

fn grouped(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// [`TABLE`] as a Markdown table (the README's).
pub fn markdown_table() -> String {
    let mut out = String::from("| what | limit | over it |\n| --- | --- | --- |\n");
    for l in TABLE {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            l.what,
            human(l.value, l.unit),
            l.over
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_people_write_them() {
        assert_eq!(human(16 << 20, Unit::Bytes), "16 MiB");
        assert_eq!(human(256, Unit::Bytes), "256 B");
        assert_eq!(human(4096, Unit::Bytes), "4 KiB");
        assert_eq!(human(10_000, Unit::Count), "10,000");
        assert_eq!(human(2000, Unit::CallsPerSecond), "2,000/s");
        assert_eq!(human(8 << 20, Unit::BytesPerSecond), "8 MiB/s");
    }

    /// The README's table of limits is this table, so the two never disagree.
    #[test]
    fn the_readme_shows_this_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("the README");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's table of limits differs from baton_proto::limits::TABLE; \
             put this in it:\n{table}"
        );
    }
}

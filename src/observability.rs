//! What the worker shows operators: the queues' counters in the Prometheus text format (served
//! at `GET /metrics` on the trigger endpoint's address). Health and the ops endpoint will join
//! them here.

use crate::listener::QueueSnapshot;
use crate::store::UnknownOutcomes;

/// The queues' counters in the Prometheus text format (served at `GET /metrics`).
pub fn prometheus(queues: &[QueueSnapshot]) -> String {
    type Field = fn(&QueueSnapshot) -> u64;
    let series: [(&str, &str, &str, Field); 19] = [
        ("active_tasks", "gauge", "Dequeue tasks running.", |q| {
            q.active_tasks
        }),
        ("peak_tasks", "gauge", "Most dequeue tasks at once.", |q| {
            q.peak_tasks
        }),
        ("in_flight", "gauge", "Handlers running.", |q| q.in_flight),
        (
            "held",
            "gauge",
            "Messages received and not yet settled.",
            |q| q.held,
        ),
        (
            "task_restarts_total",
            "counter",
            "Dequeue tasks replaced after ending unexpectedly.",
            |q| q.task_restarts,
        ),
        ("depth", "gauge", "Last probed visible depth.", |q| {
            q.depth.unwrap_or(0)
        }),
        ("receive_calls_total", "counter", "Receive calls.", |q| {
            q.receive_calls
        }),
        (
            "empty_receives_total",
            "counter",
            "Receive calls that found nothing.",
            |q| q.empty_receives,
        ),
        ("probe_calls_total", "counter", "Depth probe calls.", |q| {
            q.probe_calls
        }),
        ("received_total", "counter", "Messages received.", |q| {
            q.received
        }),
        (
            "handled_total",
            "counter",
            "Messages handled and deleted.",
            |q| q.handled,
        ),
        (
            "retried_total",
            "counter",
            "Failed tries left for a retry.",
            |q| q.retried,
        ),
        (
            "poisoned_total",
            "counter",
            "Messages moved to the poison queue.",
            |q| q.poisoned,
        ),
        (
            "released_total",
            "counter",
            "Messages released unhandled.",
            |q| q.released,
        ),
        (
            "lost_ownership_total",
            "counter",
            "Settles refused after a re-delivery.",
            |q| q.lost_ownership,
        ),
        (
            "store_errors_total",
            "counter",
            "Failed store calls.",
            |q| q.store_errors,
        ),
        ("triggers_total", "counter", "Push triggers.", |q| {
            q.triggers
        }),
        ("panics_total", "counter", "Handler panics.", |q| q.panics),
        ("timeouts_total", "counter", "Handler timeouts.", |q| {
            q.timeouts
        }),
    ];
    let mut out = String::new();
    for (name, kind, help, field) in series {
        out.push_str(&format!(
            "# HELP ebbflow_{name} {help}\n# TYPE ebbflow_{name} {kind}\n"
        ));
        for q in queues {
            out.push_str(&format!(
                "ebbflow_{name}{{queue=\"{}\"}} {}\n",
                q.queue,
                field(q)
            ));
        }
    }
    out
}

/// The unknown outcomes of each queue's calls in the Prometheus text format.
pub fn prometheus_unknown_outcomes(queues: &[(String, UnknownOutcomes)]) -> String {
    type Field = fn(&UnknownOutcomes) -> u64;
    let series: [(&str, &str, Field); 4] = [
        (
            "unanswered_receives_total",
            "Receive tries that went unanswered (their messages come back after the visibility timeout).",
            |o| o.receives,
        ),
        (
            "unanswered_sends_total",
            "Send tries that went unanswered (the message may be stored twice).",
            |o| o.sends,
        ),
        (
            "deletes_confirmed_total",
            "Deletes that went unanswered, then found the message gone: done.",
            |o| o.deletes_confirmed,
        ),
        (
            "updates_in_doubt_total",
            "Updates that went unanswered, then found the pop receipt stale: in doubt.",
            |o| o.updates_in_doubt,
        ),
    ];
    let mut out = String::new();
    for (name, help, field) in series {
        out.push_str(&format!(
            "# HELP ebbflow_{name} {help}\n# TYPE ebbflow_{name} counter\n"
        ));
        for (queue, outcomes) in queues {
            out.push_str(&format!(
                "ebbflow_{name}{{queue=\"{queue}\"}} {}\n",
                field(outcomes)
            ));
        }
    }
    out
}

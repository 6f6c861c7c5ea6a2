//! Operational metrics in the Prometheus text exposition format (`GET /metrics`).
//!
//! Counters live where the events happen: the core counts messages, errors
//! and responses and the store queue; the shell reports what only it can see
//! (loop iteration and commit latencies, policy disconnects) through
//! `Hub::record_*`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Upper bounds, in seconds, of the duration histograms' buckets.
const BUCKETS: [f64; 14] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A cumulative histogram of durations with fixed buckets.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum_seconds += secs;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Why the hub closed a connection on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Disconnect {
    /// More output queued than `--max-outbound-bytes` (close 1008).
    SlowConsumer,
    /// Sustained rate-limit abuse (close 1008).
    RateLimit,
    /// A message or frame over `--max-message-bytes` (close 1009).
    TooLarge,
    /// A WebSocket protocol violation or invalid UTF-8 (close 1002/1007).
    Protocol,
    /// Silent past `--ws-idle-timeout-ms` (close 1000).
    Idle,
    /// A request head slower than `--header-timeout-ms`.
    SlowHeader,
    /// The signed token the connection was opened with expired (close 1008).
    TokenExpired,
    /// All connections' queued output passed `--max-outbound-total-bytes` and
    /// this one held the most unread bytes (close 1008).
    OutboundBudget,
}

impl Disconnect {
    fn label(self) -> &'static str {
        match self {
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::RateLimit => "rate_limit",
            Disconnect::TooLarge => "too_large",
            Disconnect::Protocol => "protocol",
            Disconnect::Idle => "idle",
            Disconnect::SlowHeader => "slow_header",
            Disconnect::TokenExpired => "token_expired",
            Disconnect::OutboundBudget => "outbound_budget",
        }
    }
}

/// Counters and histograms beyond the `/stats` numbers.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket `error` frames sent, by code.
    pub errors: BTreeMap<&'static str, u64>,
    /// HTTP responses, by status.
    pub responses: BTreeMap<u16, u64>,
    /// Connections closed by a limit or policy, by reason.
    pub disconnects: BTreeMap<Disconnect, u64>,
    /// Connections refused at accept (503 or 429).
    pub refused: u64,
    /// Time from poll wake-up to the end of the iteration.
    pub iteration: Histogram,
    /// Commit latency as acknowledgements see it: from handing a batch to
    /// the store thread to learning it is committed.
    pub commit: Histogram,
    /// The store thread's own time per batch (its share of a group commit).
    pub store: Histogram,
    /// Commits that failed.
    pub commit_failures: u64,
    /// Requests refused by a quota or a budget, by which one.
    pub quota_refusals: BTreeMap<&'static str, u64>,
}

impl Metrics {
    /// Counts one refusal by the quota or budget `which` (a label of
    /// `realtimehub_quota_refusals_total`).
    pub fn count_quota(&mut self, which: &'static str) {
        *self.quota_refusals.entry(which).or_insert(0) += 1;
    }
}

/// Server-wide gauges and counters passed in by the hub when rendering.
pub struct Snapshot<'a> {
    pub connections: usize,
    pub projects: usize,
    pub rooms: usize,
    pub uptime_seconds: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub per_project: Vec<ProjectCounters<'a>>,
    /// Batches handed to the store thread and not yet settled.
    pub store_queue_batches: usize,
    /// Their approximate bytes.
    pub store_queue_bytes: usize,
    /// Webhook events waiting in every project's outbox.
    pub outbox_depth: u64,
    /// The hooks' counters.
    pub hooks: super::hooks::HookCounters,
    /// Access hook round trips.
    pub hook_latency: &'a Histogram,
}

/// One project's numbers, labelled by its id.
pub struct ProjectCounters<'a> {
    pub id: &'a str,
    pub connections: usize,
    pub messages_in: u64,
    pub messages_out: u64,
    pub stored_bytes: u64,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

impl Metrics {
    /// Renders everything in the text exposition format (version 0.0.4).
    pub fn render(&self, s: &Snapshot<'_>) -> String {
        let mut out = String::with_capacity(4096);
        metric(&mut out, "realtimehub_connections", "gauge", "Open WebSocket connections.", s.connections);
        metric(&mut out, "realtimehub_projects", "gauge", "Projects.", s.projects);
        metric(&mut out, "realtimehub_rooms", "gauge", "Rooms.", s.rooms);
        metric(&mut out, "realtimehub_uptime_seconds", "gauge", "Seconds since start.", s.uptime_seconds);
        metric(&mut out, "realtimehub_messages_in_total", "counter", "WebSocket frames received.", s.messages_in);
        metric(&mut out, "realtimehub_messages_out_total", "counter", "WebSocket frames sent.", s.messages_out);
        metric(&mut out, "realtimehub_bytes_in_total", "counter", "Bytes read from sockets.", s.bytes_in);
        metric(&mut out, "realtimehub_bytes_out_total", "counter", "Bytes written to sockets.", s.bytes_out);
        metric(
            &mut out,
            "realtimehub_refused_connections_total",
            "counter",
            "Connections refused at accept.",
            self.refused,
        );
        metric(
            &mut out,
            "realtimehub_commit_failures_total",
            "counter",
            "SQLite commits that failed.",
            self.commit_failures,
        );

        metric(
            &mut out,
            "realtimehub_store_queue_batches",
            "gauge",
            "Batches handed to the store thread and not yet committed.",
            s.store_queue_batches,
        );
        metric(
            &mut out,
            "realtimehub_store_queue_bytes",
            "gauge",
            "Approximate bytes of the batches handed to the store thread and not yet committed.",
            s.store_queue_bytes,
        );
        let h = &s.hooks;
        for (name, kind, help, value) in [
            ("realtimehub_webhook_outbox_events", "gauge", "Webhook events waiting for delivery.", s.outbox_depth),
            ("realtimehub_webhook_events_delivered_total", "counter", "Webhook events delivered (2xx).", h.delivered),
            ("realtimehub_webhook_failures_total", "counter", "Webhook posts that failed.", h.failures),
            ("realtimehub_webhook_retries_total", "counter", "Webhook retries scheduled.", h.retries),
            (
                "realtimehub_webhook_events_dropped_total",
                "counter",
                "Webhook events dropped: past the maximum age, or the outbox bound.",
                h.dropped,
            ),
            ("realtimehub_access_hook_calls_total", "counter", "Joins that asked the access hook.", h.access_calls),
            ("realtimehub_hook_connections", "gauge", "Connections open to backends.", h.connections),
            ("realtimehub_hook_calls_in_flight", "gauge", "Backend calls under way or waiting.", h.in_flight),
            (
                "realtimehub_access_hook_failures_total",
                "counter",
                "Access hook calls without a usable answer (joins refused unavailable).",
                h.access_failures,
            ),
        ] {
            metric(&mut out, name, kind, help, value);
        }
        let _ = writeln!(out, "# HELP realtimehub_errors_total WebSocket error frames sent, by code.");
        let _ = writeln!(out, "# TYPE realtimehub_errors_total counter");
        for (code, n) in &self.errors {
            let _ = writeln!(out, "realtimehub_errors_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP realtimehub_http_responses_total HTTP responses, by status.");
        let _ = writeln!(out, "# TYPE realtimehub_http_responses_total counter");
        for (status, n) in &self.responses {
            let _ = writeln!(out, "realtimehub_http_responses_total{{status=\"{status}\"}} {n}");
        }
        let _ =
            writeln!(out, "# HELP realtimehub_disconnects_total Connections closed by a limit or policy, by reason.");
        let _ = writeln!(out, "# TYPE realtimehub_disconnects_total counter");
        for (reason, n) in &self.disconnects {
            let _ = writeln!(out, "realtimehub_disconnects_total{{reason=\"{}\"}} {n}", reason.label());
        }
        let _ = writeln!(
            out,
            "# HELP realtimehub_quota_refusals_total Requests refused by a quota or a per-second budget, by which."
        );
        let _ = writeln!(out, "# TYPE realtimehub_quota_refusals_total counter");
        for (which, n) in &self.quota_refusals {
            let _ = writeln!(out, "realtimehub_quota_refusals_total{{quota=\"{which}\"}} {n}");
        }
        type Pick = fn(&ProjectCounters<'_>) -> u64;
        let per_project: [(&str, &str, Pick); 4] = [
            ("realtimehub_project_connections", "gauge", |p| p.connections as u64),
            ("realtimehub_project_stored_bytes", "gauge", |p| p.stored_bytes),
            ("realtimehub_project_messages_in_total", "counter", |p| p.messages_in),
            ("realtimehub_project_messages_out_total", "counter", |p| p.messages_out),
        ];
        for (name, kind, value) in per_project {
            let _ = writeln!(out, "# HELP {name} Per project.\n# TYPE {name} {kind}");
            for p in &s.per_project {
                let _ = writeln!(out, "{name}{{project=\"{}\"}} {}", p.id, value(p));
            }
        }
        self.iteration.render("realtimehub_loop_iteration_seconds", "Duration of one event-loop iteration.", &mut out);
        self.commit.render(
            "realtimehub_commit_seconds",
            "From handing a batch to the store thread to its reported commit (what acknowledgements wait).",
            &mut out,
        );
        self.store.render(
            "realtimehub_store_batch_seconds",
            "Store-thread time per batch, from taking it to the end of its commit.",
            &mut out,
        );
        s.hook_latency.render(
            "realtimehub_access_hook_seconds",
            "Access hook round trips, from asking to the answer or the timeout.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.00005\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }
}

//! `GET /metrics`: the manager's view in the Prometheus text format (version 0.0.4), for the
//! operator (admin token; Prometheus sends it with `authorization: credentials`), with the
//! router's measurements and drain forecast per shadowed address (label `ip`) when a router
//! runs in this process, and the DHCP server's counters when one does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ErrorBody;
use super::parts::PartHealth;
use super::{ApiError, ApiState, Caller};
use crate::migration::MigrationState;
use crate::store::Store;

/// Every state, so that a state with no migration still shows as 0 (a time series that
/// disappears is harder to alert on than one at zero).
const STATES: [MigrationState; 9] = [
    MigrationState::Pending,
    MigrationState::WaitingForDestinationLease,
    MigrationState::Ramping,
    MigrationState::Paused,
    MigrationState::CutOver,
    MigrationState::Completed,
    MigrationState::RolledBack,
    MigrationState::Aborted,
    MigrationState::Failed,
];

fn state_name(state: MigrationState) -> String {
    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// A sample value as the text format spells it (`+Inf`, `NaN`: Rust writes `inf`).
fn value(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_owned()
    } else if x == f64::INFINITY {
        "+Inf".to_owned()
    } else if x == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{x}")
    }
}

/// A metric family of router groups: name, type, help, the value of one member.
type GroupFamily = (&'static str, &'static str, &'static str, fn(&ipshadow_core::ha::GroupStatus) -> Option<f64>);

/// Each router group member (labels `group`, `router`): whether it is active, its takeovers
/// and how long the last one took, frames it dropped and held back while not active; and the
/// last takeover's cause (label `cause`, value 1).
fn router_groups(out: &mut String, routers: &[super::parts::RouterSummary]) {
    let members: Vec<&ipshadow_core::ha::GroupStatus> = routers.iter().filter_map(|r| r.group.as_ref()).collect();
    if members.is_empty() {
        return;
    }
    let families: [GroupFamily; 6] = [
        ("ipshadow_router_group_active", "gauge", "1 while the router is its group's active member.", |g| {
            Some(f64::from(u8::from(g.role == ipshadow_core::ha::Role::Active)))
        }),
        ("ipshadow_router_group_takeovers_total", "counter", "Times the router became active.", |g| {
            Some(g.counters.takeovers as f64)
        }),
        (
            "ipshadow_router_group_last_takeover_seconds",
            "gauge",
            "The router's last takeover: from the previous active's last announcement to its first forwarded frame.",
            |g| g.last_takeover.as_ref().and_then(|t| t.took_ms).map(|ms| ms as f64 / 1000.0),
        ),
        ("ipshadow_router_group_step_downs_total", "counter", "Times the router stopped being active.", |g| {
            Some(g.counters.step_downs as f64)
        }),
        ("ipshadow_router_group_frames_dropped_total", "counter", "Frames received while not active, dropped.", |g| {
            Some(g.counters.frames_dropped as f64)
        }),
        (
            "ipshadow_router_group_frames_suppressed_total",
            "counter",
            "Frames not sent while not active (or decided before a stall).",
            |g| Some(g.counters.frames_suppressed as f64),
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for g in &members {
            if let Some(v) = get(g) {
                let _ = writeln!(out, "{name}{{group=\"{}\",router=\"{}\"}} {}", g.group, g.name, value(v));
            }
        }
    }
    let name = "ipshadow_router_group_last_takeover_cause";
    let _ = writeln!(out, "# HELP {name} Why the router last became active (label cause).\n# TYPE {name} gauge");
    for g in &members {
        if let Some(t) = &g.last_takeover {
            let cause =
                serde_json::to_value(&t.cause).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let _ = writeln!(out, "{name}{{group=\"{}\",router=\"{}\",cause=\"{cause}\"}} 1", g.group, g.name);
        }
    }
}

/// A metric family of the parts' health: name, type, help, the value of one part.
type PartFamily = (&'static str, &'static str, &'static str, fn(&PartHealth) -> f64);

/// Each part's health (label `part`): up, restarts, how stale, records skipped.
fn part_health(out: &mut String, parts: &[PartHealth]) {
    let families: [PartFamily; 4] = [
        ("ipshadow_part_up", "gauge", "1 while the part runs and is not stuck.", |h| f64::from(u8::from(h.ok()))),
        ("ipshadow_part_restarts_total", "counter", "Restarts of the part after a failure.", |h| h.restarts as f64),
        ("ipshadow_part_age_seconds", "gauge", "Time since the part last went round its loop.", |h| {
            h.age_ms as f64 / 1000.0
        }),
        ("ipshadow_part_skipped_records", "gauge", "Store records the part could not take, left out.", |h| {
            h.skipped.len() as f64
        }),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for h in parts {
            let _ = writeln!(out, "{name}{{part=\"{}\"}} {}", h.part, value(get(h)));
        }
    }
}

/// The router's measurements and drain forecast per shadowed address (label `ip`), from its
/// latest report: one family at a time, as the text format wants.
fn patterns(out: &mut String, status: &ipshadow_contracts::router::Status, now_ms: u64) {
    let updated = status.updated.as_millis();
    let _ = writeln!(
        out,
        "# HELP ipshadow_router_report_age_seconds Age of the router's latest status report.
         # TYPE ipshadow_router_report_age_seconds gauge
ipshadow_router_report_age_seconds {}",
        value(now_ms.saturating_sub(updated) as f64 / 1000.0)
    );
    let by_side = |out: &mut String, name: &str, help: &str, get: fn(&ipshadow_core::patterns::SidePatterns) -> u32| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}
# TYPE {name} gauge"
        );
        for (ip, p) in &status.patterns {
            for (side, s) in [("source", &p.measured.source), ("destination", &p.measured.destination)] {
                let _ = writeln!(out, "{name}{{ip=\"{ip}\",side=\"{side}\"}} {}", get(s));
            }
        }
    };
    by_side(
        out,
        "ipshadow_flows_open",
        "TCP flows open per shadowed address on the source (A) and the destination (B).",
        |s| s.open,
    );
    by_side(out, "ipshadow_flows_idle", "Of the open TCP flows, idle ones (everything sent was acknowledged).", |s| {
        s.idle
    });
    let _ = writeln!(
        out,
        "# HELP ipshadow_flow_arrivals_per_second New inbound TCP flows per second over the last 10 s, per shadowed \
         address.\n# TYPE ipshadow_flow_arrivals_per_second gauge"
    );
    for (ip, p) in &status.patterns {
        let _ =
            writeln!(out, "ipshadow_flow_arrivals_per_second{{ip=\"{ip}\"}} {}", value(p.measured.arrival_rate_per_s));
    }
    let _ = writeln!(
        out,
        "# HELP ipshadow_drain_forecast_seconds Forecast time until the last of A's open flows has ended, by \
         quantile (+Inf: not foreseeable, nothing has been seen to end).\n# TYPE ipshadow_drain_forecast_seconds gauge"
    );
    for (ip, f) in status.patterns.iter().filter_map(|(ip, p)| p.forecast.as_ref().map(|f| (ip, f))) {
        for (q, ms) in [("0.5", f.p50_ms), ("0.9", f.p90_ms)] {
            let secs = ms.map_or(f64::INFINITY, |ms| ms / 1000.0);
            let _ = writeln!(out, "ipshadow_drain_forecast_seconds{{ip=\"{ip}\",quantile=\"{q}\"}} {}", value(secs));
        }
    }
    let _ = writeln!(
        out,
        "# HELP ipshadow_drain_expected_open_at_deadline A's flows expected still open at the deadline.\n\
         # TYPE ipshadow_drain_expected_open_at_deadline gauge"
    );
    for (ip, f) in status.patterns.iter().filter_map(|(ip, p)| p.forecast.as_ref().map(|f| (ip, f))) {
        if let Some(n) = f.expected_open_at_deadline {
            let _ = writeln!(out, "ipshadow_drain_expected_open_at_deadline{{ip=\"{ip}\"}} {}", value(n));
        }
    }
}

/// The router's frame counters, neighbour table and drops by reason, from its latest report:
/// what shows a flood of remote input (random sources filling the neighbour table, frames
/// dropped) before it hurts.
fn router_counters(out: &mut String, status: &ipshadow_contracts::router::Status) {
    let l2 = &status.l2;
    let series: [(&str, &str, &str, u64); 12] = [
        ("router_frames_to_vms_total", "counter", "Frames forwarded from the provider side to VMs.", l2.to_vms),
        (
            "router_frames_to_provider_total",
            "counter",
            "Frames forwarded from VMs to the provider side.",
            l2.to_provider,
        ),
        ("router_no_route_total", "counter", "Frames with no route (unknown destination or client MAC).", l2.no_route),
        ("router_arp_answered_total", "counter", "ARP requests the router answered.", l2.arp_answered),
        ("router_arp_requests_total", "counter", "ARP requests the router sent for unknown clients.", l2.arp_requests),
        ("router_neighbours", "gauge", "Client addresses in the provider-side neighbour table.", l2.neighbours),
        (
            "router_neighbours_evicted_total",
            "counter",
            "Neighbour entries evicted at the table's cap.",
            l2.neighbours_evicted,
        ),
        ("router_neighbours_aged_total", "counter", "Neighbour entries forgotten after their age.", l2.neighbours_aged),
        ("router_resets_sent_total", "counter", "RSTs the router sent at the end of migrations.", l2.resets_sent),
        ("router_closes_sent_total", "counter", "FINs and ACKs the router sent closing A's flows.", l2.closes_sent),
        ("router_flows", "gauge", "Flows the router tracks.", status.flows as u64),
        (
            "router_ended_forgotten_total",
            "counter",
            "Ended migrations older than the router's report keeps.",
            status.ended_forgotten,
        ),
    ];
    for (name, kind, help, v) in series {
        let _ = writeln!(out, "# HELP ipshadow_{name} {help}\n# TYPE ipshadow_{name} {kind}\nipshadow_{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP ipshadow_router_dropped_total Frames the router dropped, by reason.\n# TYPE ipshadow_router_dropped_total counter"
    );
    for (reason, n) in &l2.dropped {
        let _ = writeln!(out, "ipshadow_router_dropped_total{{reason=\"{reason}\"}} {n}");
    }
}

/// The DHCP server's counters (`counters` of its status, as `GET /v1/dhcp/status` shows it):
/// field and help, each a counter `ipshadow_dhcp_FIELD_total`. The fields are those of
/// `ipshadow_contracts::dhcp::DhcpCounters` (the test serializes that struct, so a renamed one fails it).
const DHCP_COUNTERS: [(&str, &str); 10] = [
    ("received", "Datagrams the DHCP server handled."),
    ("offers", "DHCPOFFERs sent."),
    ("acks", "DHCPACKs sent (INFORM answers included)."),
    ("naks", "DHCPNAKs sent."),
    ("declines", "DHCPDECLINEs received."),
    ("releases", "DHCPRELEASEs received."),
    ("unknown_clients", "Requests from clients no reservation or pool serves (left unanswered)."),
    ("pool_exhausted", "DISCOVERs left unanswered because the pool had no free address."),
    ("other_server", "REQUESTs that chose another server."),
    (
        "wrong_segment_dropped",
        "Messages naming a VM that arrived on another segment than the VM's (dropped, no lease event).",
    ),
];

/// The DHCP server's counters, leases and lease events by kind, from its status: what shows a
/// VM speaking in another's name (`wrong_segment_dropped`) or a pool running dry.
fn dhcp_counters(out: &mut String, status: &serde_json::Value) {
    let counters = &status["counters"];
    for (field, help) in DHCP_COUNTERS {
        if let Some(n) = counters[field].as_u64() {
            let name = format!("ipshadow_dhcp_{field}_total");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}");
        }
    }
    let labelled = [
        (counters["dropped"].as_object(), "reason", "dropped_total", "Datagrams the DHCP server dropped, by reason."),
        (status["events"].as_object(), "kind", "lease_events_total", "Lease events since the server started, by kind."),
    ];
    for (map, label, name, help) in labelled {
        let _ = writeln!(out, "# HELP ipshadow_dhcp_{name} {help}\n# TYPE ipshadow_dhcp_{name} counter");
        for (k, n) in map.into_iter().flatten().filter_map(|(k, v)| v.as_u64().map(|n| (k, n))) {
            let _ = writeln!(out, "ipshadow_dhcp_{name}{{{label}=\"{k}\"}} {n}");
        }
    }
    if let Some(leases) = status["leases"].as_array() {
        let _ = writeln!(
            out,
            "# HELP ipshadow_dhcp_leases Leases the DHCP server holds.\n# TYPE ipshadow_dhcp_leases gauge\nipshadow_dhcp_leases {}",
            leases.len()
        );
    }
}

/// Counts of VMs, addresses and migrations by state, each shadowed address's split, and from
/// the router's latest report (when a router runs in this process) each shadowed address's open
/// and idle flows on A and B, arrival rate, drain forecast (p50, p90) and flows expected open at
/// the deadline; from the DHCP server's status (when one runs here) its counters, drops by
/// reason, leases and lease events by kind.
#[utoipa::path(get, path = "/metrics", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format (version 0.0.4)", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics<S: Store>(State(state): State<ApiState<S>>, caller: Caller) -> Result<Response, ApiError> {
    if caller.tenant().is_some() {
        return Err(ApiError::forbidden("metrics are for the operator (admin token)"));
    }
    let (vms, addresses, migrations) =
        state.blocking(|inv| Ok((inv.vms(None)?.len(), inv.addresses(None)?.len(), inv.migrations(None)?))).await?;
    let mut by_state: BTreeMap<String, u64> = STATES.iter().map(|s| (state_name(*s), 0)).collect();
    for m in &migrations {
        *by_state.entry(state_name(m.lifecycle.state)).or_default() += 1;
    }
    let mut out = String::new();
    let _ = writeln!(out, "# HELP ipshadow_vms VMs in the inventory.\n# TYPE ipshadow_vms gauge\nipshadow_vms {vms}");
    let _ = writeln!(
        out,
        "# HELP ipshadow_addresses Addresses in the inventory.\n# TYPE ipshadow_addresses gauge\nipshadow_addresses {addresses}"
    );
    let _ = writeln!(out, "# HELP ipshadow_migrations Migrations by state.\n# TYPE ipshadow_migrations gauge");
    for (name, count) in &by_state {
        let _ = writeln!(out, "ipshadow_migrations{{state=\"{name}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "# HELP ipshadow_split_percent Share of new flows sent to the destination VM, per shadowed address.\n\
         # TYPE ipshadow_split_percent gauge"
    );
    for m in migrations.iter().filter(|m| m.lifecycle.state.is_shadowing()) {
        let _ = writeln!(out, "ipshadow_split_percent{{ip=\"{}\",migration=\"{}\"}} {}", m.ip, m.id, m.split_pct);
    }
    if let Some(status) = state.parts.router_status.as_ref().and_then(|f| f()) {
        patterns(&mut out, &status, (state.clock)());
        router_counters(&mut out, &status);
    }
    if let Some(routers) = state.parts.routers.as_ref().map(|f| f()) {
        router_groups(&mut out, &routers);
    }
    if let Some(status) = state.parts.dhcp_status.as_ref().and_then(|f| f()) {
        dhcp_counters(&mut out, &status);
    }
    if let Some(health) = state.parts.health.as_ref().map(|f| f()) {
        part_health(&mut out, &health);
    }
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, content_type)], out).into_response())
}

//! `GET /metrics` with a DHCP server in the process: its counters (including the messages dropped
//! for arriving on another VM's segment, issue 13 item 3), drops by reason, leases and lease
//! events by kind, from the status `ipshadow serve` hands the API; none of it without one.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{ACME, ADMIN, Api};
use ipshadow_client::Request;
use ipshadow_contracts::dhcp::DhcpCounters;
use ipshadow_control::RedbStore;
use ipshadow_control::api::{ApiState, Parts};
use serde_json::json;

/// The DHCP status as `ipshadow serve` publishes it: the server's own counters serialized, so a
/// renamed field fails here.
fn dhcp_status() -> serde_json::Value {
    let counters = DhcpCounters {
        received: 41,
        dropped: [("not_a_client_message", 3), ("decline_not_for_us", 1)].into(),
        offers: 9,
        acks: 8,
        naks: 1,
        declines: 2,
        releases: 4,
        unknown_clients: 5,
        pool_exhausted: 6,
        other_server: 7,
        wrong_segment_dropped: 11,
    };
    json!({
        "leases": [{"ip": "10.0.0.10", "vm": "vm-a", "client": "02:00:00:00:00:0a", "expires_ms": 0}],
        "counters": counters,
        "events": {"bound": 3, "released": 2},
    })
}

fn with_dhcp(store: RedbStore) -> ApiState<RedbStore> {
    let parts = Parts { dhcp_status: Some(Arc::new(|| Some(dhcp_status()))), ..Parts::default() };
    common::tenants_at_now(store).with_parts(parts)
}

/// The body of `GET /metrics` with `token`, and its status.
fn metrics(api: &Api, token: &str) -> (u16, String) {
    let reply = api.client.send(&Request::get("/metrics").bearer(token)).unwrap();
    (reply.status, reply.text)
}

#[test]
fn metrics_show_the_dhcp_server_s_counters() {
    let api = Api::start("metrics", "dhcp", with_dhcp);
    let (status, body) = metrics(&api, ADMIN);
    assert_eq!(status, 200, "{body}");
    for line in [
        "# TYPE ipshadow_dhcp_wrong_segment_dropped_total counter",
        "ipshadow_dhcp_wrong_segment_dropped_total 11",
        "ipshadow_dhcp_received_total 41",
        "ipshadow_dhcp_offers_total 9",
        "ipshadow_dhcp_acks_total 8",
        "ipshadow_dhcp_naks_total 1",
        "ipshadow_dhcp_declines_total 2",
        "ipshadow_dhcp_releases_total 4",
        "ipshadow_dhcp_unknown_clients_total 5",
        "ipshadow_dhcp_pool_exhausted_total 6",
        "ipshadow_dhcp_other_server_total 7",
        "ipshadow_dhcp_dropped_total{reason=\"not_a_client_message\"} 3",
        "ipshadow_dhcp_dropped_total{reason=\"decline_not_for_us\"} 1",
        "ipshadow_dhcp_lease_events_total{kind=\"bound\"} 3",
        "ipshadow_dhcp_lease_events_total{kind=\"released\"} 2",
        "ipshadow_dhcp_leases 1",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing from:\n{body}");
    }
    // Still the operator's alone.
    assert_eq!(metrics(&api, ACME).0, 403);
}

#[test]
fn without_a_dhcp_server_metrics_have_no_dhcp_series() {
    let api = Api::start("metrics", "no-dhcp", common::tenants_at_now);
    let (status, body) = metrics(&api, ADMIN);
    assert_eq!(status, 200, "{body}");
    // The observer saw the document: the inventory's series are there.
    assert!(body.lines().any(|l| l == "ipshadow_vms 0"), "{body}");
    assert!(!body.contains("ipshadow_dhcp_"), "{body}");
}

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

/// Two members of a router group as their reports say: r2 took over from r1, which went silent.
fn group_of_two() -> Vec<ipshadow_control::api::parts::RouterSummary> {
    use ipshadow_core::Instant;
    use ipshadow_core::ha::{Announcement, GroupMember, LeaseNews};
    let t = Instant::from_millis;
    let mut r1 = GroupMember::new("edge", "r1", t(0));
    r1.lease(LeaseNews::Acquired { term: 5, lease: 50 }, t(0));
    let mut r2 = GroupMember::new("edge", "r2", t(0));
    r2.turn(t(0));
    r2.heard(&Announcement { group: "edge".into(), name: "r1".into(), term: 5, lease: 50, resigning: false }, t(0));
    r2.turn(t(5));
    r2.lease(LeaseNews::Acquired { term: 9, lease: 90 }, t(700));
    r2.forwarded(t(750));
    r1.heard(&Announcement { group: "edge".into(), name: "r2".into(), term: 9, lease: 90, resigning: false }, t(800));
    r1.dropped(12);
    [("r1", r1), ("r2", r2)]
        .into_iter()
        .map(|(name, member)| {
            let status = ipshadow_contracts::router::Status {
                pid: 40,
                ha: Some(member.status(t(900), |i| i)),
                ..Default::default()
            };
            ipshadow_control::api::parts::RouterSummary::of(name, &status)
        })
        .collect()
}

#[test]
fn a_router_group_s_members_show_their_roles_and_last_takeover_in_the_list_and_the_metrics() {
    let with_group = |store: RedbStore| {
        let parts = Parts { routers: Some(Arc::new(group_of_two)), ..Parts::default() };
        common::tenants_at_now(store).with_parts(parts)
    };
    let api = Api::start("metrics", "group", with_group);
    let (status, body) = metrics(&api, ADMIN);
    assert_eq!(status, 200, "{body}");
    for line in [
        "ipshadow_router_group_active{group=\"edge\",router=\"r1\"} 0",
        "ipshadow_router_group_active{group=\"edge\",router=\"r2\"} 1",
        "ipshadow_router_group_takeovers_total{group=\"edge\",router=\"r2\"} 1",
        "ipshadow_router_group_last_takeover_seconds{group=\"edge\",router=\"r2\"} 0.75",
        "ipshadow_router_group_step_downs_total{group=\"edge\",router=\"r1\"} 1",
        "ipshadow_router_group_frames_dropped_total{group=\"edge\",router=\"r1\"} 12",
        "ipshadow_router_group_last_takeover_cause{group=\"edge\",router=\"r2\",cause=\"silent\"} 1",
        "ipshadow_router_group_last_takeover_cause{group=\"edge\",router=\"r1\",cause=\"started\"} 1",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing from:\n{body}");
    }
    let reply = api.client.send(&Request::get("/v1/routers").bearer(ADMIN)).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    let list = reply.json().unwrap();
    let roles: Vec<(&str, &str)> = list["routers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["group"]["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [("r1", "standby"), ("r2", "active")]);
    assert_eq!(list["routers"][1]["group"]["last_takeover"]["previous"], "r1");
    assert_eq!(api.client.send(&Request::get("/v1/routers").bearer(ACME)).unwrap().status, 403);
}

#[test]
fn without_a_router_the_list_of_routers_is_not_found() {
    let api = Api::start("metrics", "no-router", common::tenants_at_now);
    assert_eq!(api.client.send(&Request::get("/v1/routers").bearer(ADMIN)).unwrap().status, 404);
}

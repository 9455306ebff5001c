//! `GET /v1/migrations/{id}/events` over real TCP with a real HTTP client: the first event is the
//! migration as it is, every change follows (the manager's steps, pause, promote, abort), the
//! stream ends at the final state, another tenant gets 404 before any stream, a client that goes
//! away stops the server's watch, and a shutdown ends the streams still open. The test stands in
//! for the manager by advancing the migration through the store.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{ACME, ADMIN, Api, NOW, ZETA};
use ipshadow_client::sse::Event;
use ipshadow_client::{Request, Streaming};
use ipshadow_control::RedbStore;
use ipshadow_control::api::{ApiState, Parts};
use ipshadow_control::inventory::Inventory;
use ipshadow_control::migration::MigrationEvent;
use serde_json::{Value, json};

/// Long enough for any event on a loaded machine, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1, a client, and the store underneath (to stand in for the manager).
struct Server {
    api: Api,
    manager: Inventory<RedbStore>,
}

impl Server {
    /// A server with acme's vm-a and vm-b and X held by vm-a, and a migration of X to vm-b
    /// (pending); returns its id.
    fn with_migration(name: &str) -> (Self, u64) {
        Self::with_migration_on(name, common::tenants_at_now)
    }

    /// As [`Server::with_migration`], on the state `state` builds.
    fn with_migration_on(name: &str, state: fn(RedbStore) -> ApiState<RedbStore>) -> (Self, u64) {
        let api = Api::start("api-events", name, state);
        let s = Self { manager: Inventory::new(api.store.clone()), api };
        for (id, mac) in [("vm-a", "02:00:00:00:00:0a"), ("vm-b", "02:00:00:00:00:0b")] {
            let vm = json!({"id": id, "mac": mac, "segment": id, "tenant": "acme"});
            assert_eq!(s.post("/v1/vms", ADMIN, Some(vm)).0, 201);
        }
        let address = json!({"ip": "10.0.0.10", "vm": "vm-a", "tenant": "acme"});
        assert_eq!(s.post("/v1/addresses", ADMIN, Some(address)).0, 201);
        let (status, m) =
            s.post("/v1/addresses/10.0.0.10/reassign", ACME, Some(json!({"to": "vm-b", "migrate": true})));
        assert_eq!(status, 202, "{m}");
        let id = m["id"].as_u64().unwrap();
        (s, id)
    }

    fn post(&self, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = Request::post(path).bearer(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = self.api.client.send(&request).unwrap();
        (reply.status, reply.json().unwrap_or(Value::Null))
    }

    fn get(&self, path: &str, token: &str) -> Value {
        self.api.client.send(&Request::get(path).bearer(token)).unwrap().json().unwrap()
    }

    /// Opens the event stream of migration `id`: its status, content type, and (on 200) the
    /// events as they arrive; the channel closes when the server ends the stream.
    fn events(&self, id: u64, token: &str) -> (u16, String, Option<Stream>) {
        let response = self.events_response(id, token);
        let status = response.status;
        let content_type = response.header("content-type").unwrap_or_default().to_owned();
        if status != 200 {
            return (status, content_type, None);
        }
        let (sender, events) = mpsc::channel();
        let parsed = response.events();
        std::thread::spawn(move || read_events(parsed, &sender));
        (status, content_type, Some(Stream { events }))
    }

    /// The response to `GET /v1/migrations/{id}/events`, its body unread.
    fn events_response(&self, id: u64, token: &str) -> Streaming {
        self.api.client.open(&Request::get(&format!("/v1/migrations/{id}/events")).bearer(token)).unwrap()
    }
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    event: String,
    id: Option<u64>,
    data: Value,
}

/// The events of one open stream.
struct Stream {
    events: mpsc::Receiver<Sse>,
}

impl Stream {
    /// The next event (panics after [`WAIT`] without one, or if the stream ended).
    fn next(&self) -> Sse {
        self.events.recv_timeout(WAIT).expect("an event")
    }

    /// Whether the server ends the stream within [`WAIT`] with no more events.
    fn ends(&self) -> bool {
        matches!(self.events.recv_timeout(WAIT), Err(mpsc::RecvTimeoutError::Disconnected))
    }
}

/// Parses `text/event-stream` (the WHATWG rules the server's output needs: `field: value`
/// lines, a blank line ends an event, `:` starts a comment) until the connection ends.
fn read_events(events: impl Iterator<Item = std::io::Result<Event>>, sender: &mpsc::Sender<Sse>) {
    for event in events {
        let Ok(event) = event else { return };
        let parsed = Sse {
            event: event.name,
            id: event.id.and_then(|id| id.parse().ok()),
            data: serde_json::from_str(&event.data).unwrap(),
        };
        if sender.send(parsed).is_err() {
            return;
        }
    }
}

fn state(e: &Sse) -> &str {
    e.data["lifecycle"]["state"].as_str().unwrap()
}

#[test]
fn events_follow_every_change_and_end_at_the_final_state() {
    let (s, id) = Server::with_migration("follow");
    let (status, content_type, stream) = s.events(id, ACME);
    assert_eq!((status, content_type.as_str()), (200, "text/event-stream"));
    let stream = stream.unwrap();
    let first = stream.next();
    assert_eq!((first.event.as_str(), state(&first)), ("migration", "pending"));
    assert_eq!(first.data, s.get(&format!("/v1/migrations/{id}"), ACME));

    // Nothing to promote before the ramp starts: 409, and no event.
    assert_eq!(s.post(&format!("/v1/migrations/{id}/promote"), ACME, None).0, 409);
    // The manager's steps, then the user's controls, each arrive as the whole migration.
    s.manager.advance(id, MigrationEvent::PlanWritten, NOW).unwrap();
    s.manager.advance(id, MigrationEvent::DestinationLeaseBound, NOW).unwrap();
    s.manager.advance(id, MigrationEvent::DestinationReady, NOW).unwrap();
    let mut seen = vec![first];
    for _ in 0..3 {
        seen.push(stream.next());
    }
    for action in ["pause", "promote", "abort"] {
        let (status, body) = s.post(&format!("/v1/migrations/{id}/{action}"), ACME, None);
        assert_eq!(status, 200, "{action}: {body}");
        let e = stream.next();
        assert_eq!(e.data, body, "the event is the migration the call returned");
        seen.push(e);
        if action == "promote" {
            assert_eq!(s.post(&format!("/v1/migrations/{id}/promote"), ACME, None).0, 409, "promoted once");
        }
    }
    let states: Vec<&str> = seen.iter().map(state).collect();
    assert_eq!(
        states,
        [
            "pending",
            "waiting_for_destination_lease",
            "waiting_for_destination_lease",
            "ramping",
            "paused",
            "paused",
            "aborted"
        ]
    );
    assert_eq!(seen[5].data["lifecycle"]["promoted"], true);
    assert_eq!(seen[5].data["lifecycle"]["history"].as_array().unwrap().last().unwrap()["event"]["event"], "promote");
    let ids: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids are increasing store revisions: {ids:?}");
    assert!(stream.ends(), "the stream ends after the final state");

    // A final migration: one event, then the end.
    let (_, _, again) = s.events(id, ACME);
    let again = again.unwrap();
    assert_eq!(state(&again.next()), "aborted");
    assert!(again.ends());
}

#[test]
fn another_tenant_gets_404_before_any_stream() {
    let (s, id) = Server::with_migration("tenants");
    let (status, content_type, stream) = s.events(id, ZETA);
    assert_eq!((status, content_type.as_str(), stream.is_none()), (404, "application/json", true));
    assert_eq!(s.events(id + 1, ACME).0, 404);
    assert_eq!(s.events(id, "not-a-token").0, 401);
    // The admin sees every tenant's.
    assert_eq!(state(&s.events(id, ADMIN).2.unwrap().next()), "pending");
}

#[test]
fn a_client_that_leaves_stops_the_watch_and_shutdown_ends_the_streams() {
    // One stream at most: whether its slot is held tells whether its task still runs.
    let (mut s, first) =
        Server::with_migration_on("leave", |store| common::tenants_at_now(store).with_max_event_streams(1));
    assert_eq!(s.post(&format!("/v1/migrations/{first}/abort"), ACME, None).0, 200);
    let (status, m) = s.post("/v1/addresses/10.0.0.10/reassign", ACME, Some(json!({"to": "vm-b", "migrate": true})));
    assert_eq!(status, 202, "{m}");
    let id = m["id"].as_u64().unwrap();
    // By hand, to close the connection exactly when the test says.
    let mut client = std::net::TcpStream::connect(s.api.base.trim_start_matches("http://")).unwrap();
    let request = format!("GET /v1/migrations/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME}\r\n\r\n");
    std::io::Write::write_all(&mut client, request.as_bytes()).unwrap();
    let mut head = String::new();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    while !head.contains("event: migration") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "{head}");
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The stream's task holds the one slot: another stream is refused.
    assert_eq!(s.events_response(id, ADMIN).status, 503, "the open stream holds no slot");
    drop((reader, client));
    // Once the client has gone, its task ends and frees the slot.
    let started = Instant::now();
    let open = loop {
        if let (200, _, Some(open)) = s.events(id, ACME) {
            break open;
        }
        assert!(started.elapsed() < WAIT, "the stream's task outlived its client");
        std::thread::sleep(Duration::from_millis(50));
    };
    s.manager.advance(id, MigrationEvent::PlanWritten, NOW).unwrap();

    // A stream still open when the server shuts down ends with it.
    assert_eq!(state(&open.next()), "pending");
    assert_eq!(state(&open.next()), "waiting_for_destination_lease");
    s.api.stop();
    assert!(open.ends(), "the graceful shutdown ended the stream");
}

#[test]
fn streams_beyond_the_limit_are_503_until_one_ends() {
    let (s, id) = Server::with_migration_on("limit", |store| common::tenants_at_now(store).with_max_event_streams(2));
    let (_, _, first) = s.events(id, ACME);
    let (_, _, second) = s.events(id, ADMIN);
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(state(&first.next()), "pending");
    assert_eq!(state(&second.next()), "pending");
    let response = s.events_response(id, ACME);
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("5"));
    let body: Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    // The migration ends: so do its streams.
    s.manager.advance(id, MigrationEvent::Abort, NOW).unwrap();
    assert!(first.next().data["lifecycle"]["state"] == "aborted" && first.ends());
    assert!(second.next().data["lifecycle"]["state"] == "aborted" && second.ends());
    // The streams ended: their slots are free again for a new migration's streams.
    let (status, m) = s.post("/v1/addresses/10.0.0.10/reassign", ACME, Some(json!({"to": "vm-b", "migrate": true})));
    assert_eq!(status, 202, "{m}");
    let next = m["id"].as_u64().unwrap();
    let started = Instant::now();
    let mut open = Vec::new();
    while open.len() < 2 {
        assert!(started.elapsed() < WAIT, "the ended streams' slots were not freed");
        match s.events(next, ACME) {
            (200, _, Some(stream)) => open.push(stream),
            (503, _, _) => std::thread::sleep(Duration::from_millis(50)),
            (status, _, _) => panic!("{status}"),
        }
    }
    assert_eq!(s.events(next, ACME).0, 503, "the limit holds");
}

/// One tenant at its own limit is refused, naming that limit, while another tenant (and the
/// admin) still open streams: one tenant cannot take every stream.
#[test]
fn each_tenant_has_its_own_stream_limit() {
    let (s, acme_id) = Server::with_migration_on("per-tenant", |store| {
        common::tenants_at_now(store).with_max_event_streams(4).with_max_event_streams_per_tenant(2)
    });
    for (id, mac) in [("zeta-a", "02:00:00:00:01:0a"), ("zeta-b", "02:00:00:00:01:0b")] {
        let vm = json!({"id": id, "mac": mac, "segment": id, "tenant": "zeta"});
        assert_eq!(s.post("/v1/vms", ADMIN, Some(vm)).0, 201);
    }
    let address = json!({"ip": "10.0.0.20", "vm": "zeta-a", "tenant": "zeta"});
    assert_eq!(s.post("/v1/addresses", ADMIN, Some(address)).0, 201);
    let (status, m) = s.post("/v1/addresses/10.0.0.20/reassign", ZETA, Some(json!({"to": "zeta-b", "migrate": true})));
    assert_eq!(status, 202, "{m}");
    let zeta_id = m["id"].as_u64().unwrap();

    let mut open = Vec::new();
    for _ in 0..2 {
        let (status, _, stream) = s.events(acme_id, ACME);
        assert_eq!(status, 200);
        let stream = stream.unwrap();
        assert_eq!(state(&stream.next()), "pending");
        open.push(stream);
    }
    let response = s.events_response(acme_id, ACME);
    assert_eq!(response.status, 503);
    let body: Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(body["message"].as_str().unwrap().contains("your tenant has 2 event streams open"), "{body}");
    // Another tenant and the admin are not held back by acme's streams.
    let (status, _, zeta) = s.events(zeta_id, ZETA);
    assert_eq!(status, 200, "zeta is under its own limit");
    assert_eq!(state(&zeta.unwrap().next()), "pending");
    let (status, _, admin) = s.events(acme_id, ADMIN);
    assert_eq!(status, 200, "the admin has only the overall limit");
    let _admin = admin.unwrap();
    // Now the overall limit (4) is reached: zeta, under its own, is refused by it.
    let response = s.events_response(zeta_id, ZETA);
    assert_eq!(response.status, 503);
    // An acme stream's client goes (its reader notices at the next event, and closes the
    // connection): acme may open one again.
    drop(open.pop());
    s.manager.advance(acme_id, MigrationEvent::PlanWritten, NOW).unwrap();
    assert_eq!(state(&open[0].next()), "waiting_for_destination_lease");
    let started = Instant::now();
    loop {
        match s.events(acme_id, ACME) {
            (200, _, Some(_)) => break,
            (503, _, _) => {
                assert!(started.elapsed() < WAIT, "the closed stream's slot was not freed");
                std::thread::sleep(Duration::from_millis(50));
            }
            (status, _, _) => panic!("{status}"),
        }
    }
}

#[test]
fn the_document_describes_promote_and_the_event_stream() {
    let (s, _) = Server::with_migration("openapi");
    let document = s.api.client.send(&Request::get("/openapi.json")).unwrap().json().unwrap();
    let paths = &document["paths"];
    assert!(paths["/v1/migrations/{id}/promote"]["post"].is_object());
    let events = &paths["/v1/migrations/{id}/events"]["get"];
    assert!(events["responses"]["200"]["content"]["text/event-stream"].is_object(), "{events}");
    assert!(events["responses"]["404"].is_object());
    assert!(events["responses"]["503"].is_object());
}

/// When the fake router below last reported, unix milliseconds: it reports every 50 ms.
static REPORTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(NOW);

/// A router that reports X shadowed by a migration created at [`NOW`], with A's forecast, and a
/// new report every time it is asked (more often than any watcher needs).
fn router_reporting(store: RedbStore) -> ApiState<RedbStore> {
    use ipshadow_core::patterns::{DrainForecast, Tail};
    use ipshadow_core::{CongestionControlParameters, Instant, MigrationOptions, ShadowingEntry};
    let report = || {
        let x = "10.0.0.10".parse().unwrap();
        let at = REPORTED.fetch_add(50, std::sync::atomic::Ordering::Relaxed);
        let entry = ShadowingEntry::new(
            x,
            "vm-a".into(),
            "vm-b".into(),
            Instant::from_millis(NOW),
            CongestionControlParameters::default(),
            MigrationOptions::default(),
        );
        let forecast = DrainForecast {
            open: 4,
            p50_ms: Some(9_000.0),
            p90_ms: Some(20_000.0),
            expected_open_at_deadline: None,
            horizon_ms: 30_000.0,
            tail: Tail::Exponential { rate_per_s: 0.1 },
            observations: 50,
        };
        let patterns =
            ipshadow_contracts::router::AddressPatterns { measured: Default::default(), forecast: Some(forecast) };
        Some(ipshadow_contracts::router::Status {
            updated: Instant::from_millis(at),
            entries: vec![entry],
            patterns: [(x, patterns)].into(),
            ..Default::default()
        })
    };
    let parts = Parts { router_status: Some(std::sync::Arc::new(report)), ..Parts::default() };
    common::tenants_at_now(store).with_parts(parts)
}

/// Issue 12: the stream carries the router's forecast for a shadowing migration, at most once
/// a second however often the router reports.
#[test]
fn the_stream_carries_forecast_updates_at_most_once_a_second() {
    let (s, id) = Server::with_migration_on("observations", router_reporting);
    let (status, _, stream) = s.events(id, ACME);
    assert_eq!(status, 200);
    let stream = stream.unwrap();
    assert_eq!(stream.next().event, "migration");
    let first = stream.next();
    assert_eq!(first.event, "observation");
    assert_eq!(first.id, None, "not a store version");
    assert_eq!(
        (first.data["forecast"]["p90_ms"].as_f64(), first.data["forecast"]["open"].as_u64()),
        (Some(20_000.0), Some(4))
    );
    let started = Instant::now();
    let mut observations = 1;
    while started.elapsed() < Duration::from_millis(2_500) {
        if let Ok(e) = stream.events.recv_timeout(Duration::from_millis(100))
            && e.event == "observation"
        {
            observations += 1;
        }
    }
    // The router reported dozens of times; the stream sent one a second.
    assert!((2..=4).contains(&observations), "{observations} observations in 2.5 s");
    // A change of the migration still arrives as a migration event.
    s.manager.advance(id, MigrationEvent::Abort, NOW).unwrap();
    loop {
        let e = stream.next();
        if e.event == "migration" {
            assert_eq!(state(&e), "aborted");
            break;
        }
    }
    assert!(stream.ends());
}

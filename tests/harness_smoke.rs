//! Smoke test for the harness itself: the hub starts and answers `GET /health`.

mod common;

use common::Hub;

#[test]
fn hub_starts_and_reports_health() {
    let hub = Hub::start();
    let resp = hub.get("/health", None);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["status"], "ok", "{resp:?}");
}

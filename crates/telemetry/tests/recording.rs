//! The process-wide recording switch (`PADDOCK_METRICS=off`, the overhead benchmark's
//! baseline): its own test binary, since it changes every metric of the process.

use std::time::Duration;

#[test]
fn recording_off_drops_observations_and_on_resumes_them() {
    let h = &paddock_telemetry::CREATE_PHASE;
    let c = &paddock_telemetry::CREATES;
    h.observe(&["validate"], Duration::from_millis(1));
    c.inc(&["ok"]);
    assert_eq!((h.count(&["validate"]), c.get(&["ok"])), (1, 1));

    paddock_telemetry::metrics::set_recording(false);
    h.observe(&["validate"], Duration::from_millis(1));
    c.inc(&["ok"]);
    assert_eq!((h.count(&["validate"]), c.get(&["ok"])), (1, 1));
    // What was recorded is still shown.
    let text = paddock_telemetry::metrics::render(&paddock_telemetry::all());
    assert!(
        text.contains("paddock_creates_total{outcome=\"ok\"} 1"),
        "{text}"
    );

    paddock_telemetry::metrics::set_recording(true);
    h.observe(&["validate"], Duration::from_millis(1));
    c.inc(&["ok"]);
    assert_eq!((h.count(&["validate"]), c.get(&["ok"])), (2, 2));
}

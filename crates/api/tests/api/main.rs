//! Drives the REST API through `ControlPlane::router()` (no socket) against a real SQLite store
//! in a temporary directory and an in-test `FakeNode`: a real node needs root and a rootfs;
//! the end-to-end suite covers that.

mod admission;
mod builds;
mod create;
mod events;
mod hardening;
mod harness;
mod lifecycle;
mod logs;
mod metrics;
mod nodes;
mod pause;
mod sandboxes;
mod snapshots;
mod tags;

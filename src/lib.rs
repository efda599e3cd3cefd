//! locall-operator: carries a Locall release from pre-deployment checks through staging into
//! production, with approvals, progressive traffic and rollback.
//!
//! Data flows one way: watch -> `controller::observe` -> `engine::decide` (pure) ->
//! `controller::act` -> status.

pub mod api;
pub mod controller;
pub mod engine;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod plugin;
pub mod sim;
pub mod telemetry;
pub mod traffic;

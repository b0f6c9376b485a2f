//! End-to-end tests: each drives the real `perch` binary with real MQTT
//! clients over loopback. One integration binary, one module per subject.

mod util;

mod admin;
mod broker;
mod burst;
mod cli;
mod conformance;
mod control;
mod demo;
mod devkit;
mod docs;
mod docs_figures;
mod dollar;
mod durable;
mod faults;
mod flags;
mod functions;
mod hostile;
mod hostile_control;
mod hostile_input;
mod house;
mod json_output;
mod lifecycle;
mod live_drain;
mod load;
mod mirror;
mod mqtt5;
mod peer;
mod readers;
mod refused;
mod rollout;
mod signing;
mod spec_fixes;
mod startup;
mod store_forward;
mod time_limits;
mod upgrades;
mod upstream;

//! End-to-end tests: the real `perch` binary, real MQTT clients, loopback
//! only. Each test starts its own gateway on port 0 in a temporary data
//! directory, and every wait has a timeout.

mod functions;
mod util;

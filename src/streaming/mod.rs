//! The streaming server behind Exec, Attach and PortForward (issue 7).
//!
//! So far this holds the SPDY/3.1 frame codec; the HTTP upgrade, the
//! remotecommand/portforward sessions and the WebSocket transport build on it.

pub mod spdy;

#[cfg(test)]
mod spdy_tests;

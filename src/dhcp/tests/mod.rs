//! Tests for the DHCP client; the fake server lives in `fake_server`.

mod decline;
mod fake_server;
mod harness;
mod machine;
mod prop;
mod reject;

//! Tests for the DHCPv6 client; the fake server lives in `fake_server`.

mod fake_server;
mod machine;
mod prop;
